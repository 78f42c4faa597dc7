"""An independent GPTQ packer for the tests: it lays values out bit by bit (numpy), with no shift arithmetic
shared with gptq_kernels, so a bug in the library's packing cannot hide in both."""
import numpy as np
import torch


def pack_bitstream(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int values [K, N] -> int32 [K*bits/32, N]: column n's values form one little-endian bit stream."""
    v = values.numpy().astype(np.uint64)
    k, n = v.shape
    stream = ((v[:, :, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint64)  # [K, N, bits]
    stream = stream.transpose(1, 0, 2).reshape(n, k * bits // 32, 32)  # per column: words of 32 bits
    words = (stream << np.arange(32, dtype=np.uint64)).sum(axis=2).astype(np.uint32)  # [N, words]
    return torch.from_numpy(words.T.copy().view(np.int32))


def unpack_bitstream(packed: torch.Tensor, bits: int) -> torch.Tensor:
    w = packed.numpy().view(np.uint32).astype(np.uint64)  # [words, N]
    rows, n = w.shape
    stream = ((w.T[:, :, None] >> np.arange(32, dtype=np.uint64)) & 1).reshape(n, rows * 32 // bits, bits)
    values = (stream << np.arange(bits, dtype=np.uint64)).sum(axis=2)
    return torch.from_numpy(values.T.astype(np.int32).copy())


def pack_zeros_v1(zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points [G, N] -> qzeros as GPTQModel writes format "gptq" (v1): for 2/4/8 bits the packed zero
    points minus one in every field, subtracted from whole uint32 words (a zero of 0 borrows from the next
    field); for 3 bits every stored value is (zero - 1) mod 8."""
    if bits == 3:
        return pack_bitstream(((zero - 1) % 8).t().contiguous(), 3).t().contiguous()
    words = pack_bitstream(zero.t().contiguous(), bits).t().contiguous().numpy().view(np.uint32)
    ones = np.uint32(int("".join(["0" * (bits - 1) + "1"] * (32 // bits)), 2))
    return torch.from_numpy((words - ones).view(np.int32).copy())  # uint32 arithmetic wraps


def random_layer(k: int, n: int, bits: int, group_size: int, act_order: bool = False, sym: bool = False,
                 scale_dtype=torch.float16):
    """Random integers, scales, zeros and g_idx of a layer, packed with the independent packer.

    Returns (tensors, q [K, N], scale [G, N] float64, zero [G, N], g_idx [K]) so tests can build the expected
    weight straight from the integers."""
    groups = 1 if group_size == -1 else -(-k // group_size)
    q = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
    if sym:
        zero = torch.full((groups, n), 1 << (bits - 1), dtype=torch.int32)
    else:
        zero = torch.randint(0, 1 << bits, (groups, n), dtype=torch.int32)
        zero[:, ::7] = 0  # zero points of 0 make the v1 layout borrow across fields: cover them at every width
    scale = (torch.rand(groups, n, dtype=torch.float64) * 0.02 + 0.001).to(scale_dtype)
    g_idx = torch.arange(k, dtype=torch.int32) // group_size if group_size != -1 else torch.zeros(k, dtype=torch.int32)
    if act_order:
        g_idx = g_idx[torch.randperm(k)]
    tensors = {
        "qweight": pack_bitstream(q, bits),
        "qzeros": pack_zeros_v1(zero, bits),
        "scales": scale,
        "g_idx": g_idx,
    }
    return tensors, q, scale.double(), zero, g_idx


def expected_weight_t(q, scale, zero, g_idx) -> torch.Tensor:
    """W^T [K, N] in float64 straight from the integers."""
    g = g_idx.long()
    return scale.double()[g] * (q.double() - zero.double()[g])


def fragment_order_rows():
    """Row of a 32-row block stored at each stream position in fragment order, from the mma.m16n8k16 B fragment
    (PTX ISA): lane t holds in register r of 16-row step s rows 16s + 8r + 2t (low half) and 16s + 8r + 2t + 1
    (high half). Each lane's eight values are stored together, lanes in order, the low halves of its four
    registers (s, r) = (0, 0), (0, 1), (1, 0), (1, 1) first, then their high halves."""
    rows = []
    for t in range(4):
        for half in range(2):
            for s in range(2):
                for r in range(2):
                    rows.append(16 * s + 8 * r + 2 * t + half)
    return rows


def pack_fragment_order(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int values [K, N] -> qweight in fragment order (K a multiple of 32)."""
    rows = fragment_order_rows()
    perm = torch.tensor([b + r for b in range(0, values.shape[0], 32) for r in rows])
    return pack_bitstream(values[perm].contiguous(), bits)
