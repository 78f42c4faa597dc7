"""The GPTQ bit layout: the library's packers against the independent bit-stream packer, exactly."""
import pytest
import torch

from bitstream import pack_bitstream, pack_fragment_order, pack_zeros_v1, unpack_bitstream
from gptq_kernels import format, ops, reference

BITS = [2, 3, 4, 8]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("k,n", [(32, 32), (96, 64), (576, 96)])
def test_pack_matches_independent_bitstream(bits, k, n):
    values = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
    expected = pack_bitstream(values, bits)
    assert expected.shape == (k * bits // 32, n)
    assert torch.equal(reference.pack_rows(values, bits), expected)
    assert torch.equal(ops.pack(values, bits), expected)
    assert torch.equal(reference.unpack_rows(expected, bits), values)
    assert torch.equal(ops.unpack(expected, bits), values)
    assert torch.equal(unpack_bitstream(expected, bits), values)


def test_three_bit_values_straddle_words():
    # Value 10 of a block occupies stream bits 30..32: its low two bits end word 0, its top bit starts word 1.
    values = torch.zeros(32, 32, dtype=torch.int32)
    values[10, 0] = 0b101
    values[21, 1] = 0b110  # stream bits 63..65: bit 31 of word 1, bits 0-1 of word 2
    packed = ops.pack(values, 3)
    words = packed.numpy().view("uint32")
    assert words[0, 0] == 0b01 << 30 and words[1, 0] == 1 and words[2, 0] == 0
    assert words[0, 1] == 0 and words[1, 1] == 0 and words[2, 1] == 0b11
    assert torch.equal(ops.unpack(packed, 3), values)


def test_zeros_store_zero_minus_one():
    zeros = torch.randint(1, 16, (5, 64), dtype=torch.int32)
    qzeros = reference.pack_zeros(zeros, 4)
    assert qzeros.shape == (5, 64 * 4 // 32)
    assert torch.equal(qzeros, pack_bitstream((zeros - 1).t().contiguous(), 4).t())
    assert torch.equal(reference.unpack_zeros(qzeros, 4), zeros)


def test_zero_point_zero_borrows_like_gptqmodel():
    # Zero points 0 and 5 then six 1s in one 4-bit word: 0x11111150 - 0x11111111 = 0x3F, so the stored field
    # after the 0 is 3 (borrowed), not 4.
    zeros = torch.tensor([0, 5, 1, 1, 1, 1, 1, 1] * 4, dtype=torch.int32).reshape(1, 32)
    qzeros = reference.pack_zeros(zeros, 4)
    assert qzeros.numpy().view("uint32")[0, 0] == 0x3F
    assert torch.equal(reference.unpack_zeros(qzeros, 4), zeros)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_checkpoint_zeros_against_independent_writer(bits, checkpoint_format):
    zeros = torch.randint(0, 1 << bits, (3, 96), dtype=torch.int32)
    zeros[:, ::5] = 0
    written = (pack_zeros_v1(zeros, bits) if checkpoint_format == "gptq"
               else pack_bitstream(zeros.t().contiguous(), bits).t().contiguous())
    assert torch.equal(reference.zeros_to_checkpoint(zeros, bits, checkpoint_format), written)
    assert torch.equal(reference.zeros_from_checkpoint(written, bits, checkpoint_format), zeros)


@pytest.mark.parametrize("bits", [0, 1, 5, 16])
def test_pack_rejects_unsupported_bits(bits):
    with pytest.raises(RuntimeError, match=f"bits must be 2, 3, 4 or 8, got {bits}"):
        ops.pack(torch.zeros(32, 32, dtype=torch.int32), bits)
    with pytest.raises(RuntimeError, match=f"bits must be 2, 3, 4 or 8, got {bits}"):
        ops.unpack(torch.zeros(16, 32, dtype=torch.int32), bits)


def test_pack_errors():
    with pytest.raises(RuntimeError, match=r"values must lie in \[0, 16\)"):
        ops.pack(torch.full((32, 32), 16, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.pack(torch.zeros(40, 32, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="values must be int32"):
        ops.pack(torch.zeros(32, 32), 4)
    with pytest.raises(RuntimeError, match="multiple of bits = 3"):
        ops.unpack(torch.zeros(4, 32, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        reference.pack_rows(torch.zeros(40, 32, dtype=torch.int32), 4)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("k,n", [(32, 1), (96, 64), (576, 40)])
def test_permute_rows_matches_the_independent_packer(bits, k, n):
    g = torch.Generator().manual_seed(bits * k + n)
    values = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32, generator=g)
    perm = torch.randperm(k, generator=g)
    expected = pack_bitstream(values[perm].contiguous(), bits)
    packed = pack_bitstream(values, bits)
    assert torch.equal(ops.permute_rows(packed, perm, bits), expected)
    assert torch.equal(reference.permute_rows(packed, perm, bits), expected)
    # A non-contiguous packed tensor gives the same result.
    wide = torch.zeros(packed.shape[0], 2 * n, dtype=torch.int32)
    wide[:, ::2] = packed
    assert torch.equal(ops.permute_rows(wide[:, ::2], perm, bits), expected)


def test_permute_rows_errors():
    packed = torch.zeros(12, 8, dtype=torch.int32)  # 3-bit: K = 128
    perm = torch.arange(128)
    with pytest.raises(RuntimeError, match=r"perm must be int64"):
        ops.permute_rows(packed, perm.int(), 3)
    with pytest.raises(RuntimeError, match=r"perm must have shape \[128\]"):
        ops.permute_rows(packed, perm[:96], 3)
    with pytest.raises(RuntimeError, match=r"perm\[5\] = 128 is not a row index in \[0, 128\)"):
        ops.permute_rows(packed, torch.cat([perm[:5], torch.tensor([128]), perm[6:]]), 3)
    with pytest.raises(RuntimeError, match="not a permutation: row 0 appears twice"):
        ops.permute_rows(packed, torch.cat([perm[:5], torch.tensor([0]), perm[6:]]), 3)
    with pytest.raises(RuntimeError, match="multiple of bits = 3"):
        ops.permute_rows(packed[:11], perm, 3)
    with pytest.raises(RuntimeError, match="bits"):
        ops.permute_rows(packed, perm, 5)


def test_layout_shapes_and_checks():
    shapes = format.tensor_shapes(576, 1536, 3, 128)
    assert shapes == {"qweight": (54, 1536), "qzeros": (5, 144), "scales": (5, 1536), "g_idx": (576,),
                      "bias": (1536,)}
    assert format.num_groups(576, -1) == 1 and format.num_groups(576, 128) == 5
    good = {"qweight": torch.zeros(54, 1536, dtype=torch.int32), "qzeros": torch.zeros(5, 144, dtype=torch.int32),
            "scales": torch.zeros(5, 1536, dtype=torch.float16)}
    format.check_layer_tensors(good, 576, 1536, 3, 128)
    with pytest.raises(ValueError, match=r"mlp.qzeros has shape \(5, 143\), expected \(5, 144\)"):
        format.check_layer_tensors({**good, "qzeros": torch.zeros(5, 143, dtype=torch.int32)}, 576, 1536, 3, 128,
                                   name="mlp")
    with pytest.raises(ValueError, match="layer.scales has dtype int32"):
        format.check_layer_tensors({**good, "scales": torch.zeros(5, 1536, dtype=torch.int32)}, 576, 1536, 3, 128)
    with pytest.raises(ValueError, match="layer.qzeros is missing"):
        format.check_layer_tensors({"qweight": good["qweight"], "scales": good["scales"]}, 576, 1536, 3, 128)
    with pytest.raises(ValueError, match="bits must be one of"):
        format.check_bits(6)
    with pytest.raises(ValueError, match="group_size must be -1"):
        format.check_group_size(0)
    with pytest.raises(ValueError, match="in_features must be a positive multiple of 32"):
        format.check_features(100, 64)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("k,n", [(32, 1), (96, 64), (576, 40)])
def test_fragment_order_matches_the_independent_packer(bits, k, n):
    g = torch.Generator().manual_seed(bits * k + n)
    values = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32, generator=g)
    packed, expected = pack_bitstream(values, bits), pack_fragment_order(values, bits)
    assert not torch.equal(packed, expected) or k * n == 0
    assert torch.equal(ops.to_fragment_order(packed, bits), expected)
    assert torch.equal(ops.from_fragment_order(expected, bits), packed)
    wide = torch.zeros(packed.shape[0], 2 * n, dtype=torch.int32)  # non-contiguous input
    wide[:, ::2] = packed
    assert torch.equal(ops.to_fragment_order(wide[:, ::2], bits), expected)


def test_fragment_order_errors():
    for bits in (3, 8):
        with pytest.raises(RuntimeError, match="fragment order exists for 2- and 4-bit weights only, got bits = "
                                               f"{bits}"):
            ops.to_fragment_order(torch.zeros(bits, 8, dtype=torch.int32), bits)
    with pytest.raises(RuntimeError, match="multiple of bits = 4"):
        ops.from_fragment_order(torch.zeros(6, 8, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="int32"):
        ops.to_fragment_order(torch.zeros(4, 8), 4)
