"""GPTQ for one linear layer (Frantar et al., 2022, arXiv 2210.17323): quantize_weight.

Given a weight W [N, K] and the Hessian H = 2/n * sum(x x^T) [K, K] of the layer's inputs, GPTQ quantizes
the columns of W one after another and spreads each column's rounding error over the columns not yet
quantized, weighted by U, the upper Cholesky factor of H^-1. Columns are processed in blocks: the compiled
op ``gptq_block`` runs the column loop inside a block (every row in parallel), and the error of a whole
block reaches the later columns through one matrix product (the paper's "lazy batch" update).

Options as GPTQ users know them: bits 2/3/4/8, group_size (-1 = one grid per output channel), sym/asym zero
points, act-order (``desc_act``: columns by decreasing Hessian diagonal), static groups (grids fitted on
the unquantized weight before the loop, so act-order needs no g_idx reordering at inference) and
group-aware act-order (``act_group_aware``: whole groups in order of importance, each group's columns by
decreasing diagonal; most of act-order's gain while the checkpoint keeps the plain g = k // group_size map).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from . import ops
from .format import check_bits, check_features, check_group_size, default_g_idx, num_groups
from .grid import dequantize_from_grid, fit_grid, quantize_to_grid
from .quantized import QuantizedWeight

# Damping is raised by this factor each time the damped Hessian is still not positive definite, at most
# MAX_DAMP_STEPS times (0.01 * 2^30 times the mean diagonal dwarfs any Hessian a layer can produce).
DAMP_GROWTH = 2.0
MAX_DAMP_STEPS = 30


@dataclass
class GPTQWeight(QuantizedWeight):
    """A QuantizedWeight produced by GPTQ, with what the run measured.

    error: the GPTQ objective sum((w - q)^2 / U[j, j]^2) / 2 over all weights (the paper's loss; 0 = exact).
    damp_percent: the damping actually used, as a fraction of the mean Hessian diagonal (raised above the
        requested value when the Hessian was not positive definite).
    perm: the column order used (act-order), or None.
    seconds: wall time of quantize_weight.
    """

    error: float = 0.0
    damp_percent: float = 0.0
    perm: Optional[torch.Tensor] = None
    seconds: float = 0.0
    name: Optional[str] = None


@dataclass
class PreparedHessian:
    """What GPTQ needs from a Hessian, computed once: layers that read the same input (q/k/v) share it.

    dead: input channels with a zero diagonal; perm: the column order (act-order or group-aware) or None;
    cholesky: R, the upper triangular matrix with H + damping = R R^T in processing order (R = U^-1, see
    hessian_factor); damp_percent: the damping used; group_aware: the group size of a group-aware order, else
    None. ``factor`` is U itself, formed on first use (quantize_weight needs only R).
    """

    dead: torch.Tensor
    perm: Optional[torch.Tensor]
    cholesky: torch.Tensor
    damp_percent: float
    group_aware: Optional[int] = None
    _factor: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def factor(self) -> torch.Tensor:
        """U, the upper Cholesky factor of the damped inverse Hessian (U = R^-1)."""
        if self._factor is None:
            self._factor = invert_lower_triangular(self.cholesky.t()).t().contiguous()
        return self._factor


def _all_finite(t: torch.Tensor) -> bool:
    if not t.numel():
        return True
    lo, hi = torch.aminmax(t)  # one pass without a temporary; both propagate NaN
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def prepare_hessian(hessian: torch.Tensor, *, desc_act: bool = False, damp_percent: float = 0.01,
                    name: Optional[str] = None, act_group_aware: bool = False,
                    group_size: Optional[int] = None) -> PreparedHessian:
    """Checks, damps and factors a Hessian [K, K] for quantize_weight (see there for the rules).

    act_group_aware orders the columns group-aware for groups of ``group_size`` (required then, > 0)."""
    label = name or "weight"
    if act_group_aware and desc_act:
        raise ValueError(f"{label}: act_group_aware and desc_act are alternative column orders; choose one")
    if act_group_aware and not (isinstance(group_size, int) and group_size > 0):
        raise ValueError(f"{label}: act_group_aware needs groups (group_size > 0), got group_size={group_size!r}")
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"{label}: hessian must be a square matrix, got shape {tuple(hessian.shape)}")
    if not (isinstance(damp_percent, (int, float)) and 0 <= damp_percent < 1):
        raise ValueError(f"{label}: damp_percent must be in [0, 1), got {damp_percent!r}")
    if not _all_finite(hessian):
        raise ValueError(f"{label}: the Hessian contains NaN or Inf (were the calibration activations finite?)")
    H = hessian.detach().to(torch.float32)
    dead = torch.diag(H) == 0
    if bool(dead.any()):  # copied only when changed: the factorisation never writes to H
        H = H.clone()
        H[dead, dead] = 1.0
    perm = None
    if desc_act:
        perm = torch.argsort(torch.diag(H), descending=True)
    elif act_group_aware:
        perm = group_aware_order(torch.diag(H), group_size)
    if perm is not None:
        H = H.index_select(0, perm).index_select(1, perm)  # (3x as fast as H[perm][:, perm])
    R, damp_used = hessian_factor(H, damp_percent, label)
    return PreparedHessian(dead, perm, R, damp_used, group_size if act_group_aware else None)


def group_aware_order(importance: torch.Tensor, group_size: int) -> torch.Tensor:
    """The group-aware column order for the Hessian diagonal ``importance`` [K].

    Groups are the checkpoint's groups, runs of group_size input channels. Whole groups are processed one
    after another, the group with the largest diagonal entry first, and inside each group its columns by
    decreasing diagonal, as act-order would. Each group's grid is still fitted when the group starts (on
    weights already corrected for every earlier group), and g_idx stays k // group_size. A partial last group
    goes last, so that every group starts at a multiple of group_size in processing order.
    """
    columns = importance.numel()
    full = columns // group_size
    head = importance[:full * group_size].view(full, group_size)
    within = torch.argsort(head, dim=1, descending=True, stable=True)
    within += torch.arange(full, device=importance.device)[:, None] * group_size
    by_importance = torch.argsort(head.amax(dim=1), descending=True, stable=True)
    tail = torch.arange(full * group_size, columns, device=importance.device)
    tail = tail[torch.argsort(importance[tail], descending=True, stable=True)]
    return torch.cat([within[by_importance].reshape(-1), tail])


def checked_layer_inputs(weight: torch.Tensor, hessian, *, block_size: int, desc_act: bool, damp_percent: float,
                         name: Optional[str], act_group_aware: bool = False,
                         group_size: Optional[int] = None) -> "PreparedHessian":
    """Checks one layer's weight [N, K], Hessian [K, K] (or PreparedHessian) and block size, and prepares the
    Hessian when it is not prepared yet: the common start of quantize_weight and GPTQT's quantizer."""
    label = name or "weight"
    if weight.dim() != 2:
        raise ValueError(f"{label}: weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    check_features(columns, rows)
    size = hessian.cholesky.shape if isinstance(hessian, PreparedHessian) else hessian.shape
    if tuple(size) != (columns, columns):
        raise ValueError(f"{label}: hessian must have shape [{columns}, {columns}] (in_features squared), "
                         f"got {tuple(size)}")
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"{label}: block_size must be a positive int, got {block_size!r}")
    if not _all_finite(weight):
        raise ValueError(f"{label}: the weight contains NaN or Inf")
    if not isinstance(hessian, PreparedHessian):
        hessian = prepare_hessian(hessian.to(weight.device), desc_act=desc_act, damp_percent=damp_percent,
                                  name=name, act_group_aware=act_group_aware, group_size=group_size)
    elif hessian.group_aware is not None and hessian.group_aware != group_size:
        raise ValueError(f"{label}: the Hessian was prepared in group-aware order for group_size "
                         f"{hessian.group_aware}, but group_size is {group_size}")
    return hessian


def quantize_weight(weight: torch.Tensor, hessian, *, bits: int = 4, group_size: int = 128,
                    sym: bool = True, desc_act: bool = False, static_groups: bool = False,
                    damp_percent: float = 0.01, block_size: int = 128, name: Optional[str] = None,
                    scale_dtype: torch.dtype = torch.float16, act_group_aware: bool = False) -> GPTQWeight:
    """GPTQ-quantizes weight [N, K] (nn.Linear layout) given the Hessian [K, K] of its inputs.

    Runs on the weight's device in float32. Input channels whose Hessian diagonal is 0 (never active in the
    calibration data) are "dead": their weights are set to zero. A Hessian that is not positive definite even
    after damping gets more damping, step by step, with a warning. NaN or Inf in the weight or the Hessian
    raises ValueError naming the layer (``name``). ``hessian`` may also be a PreparedHessian from
    prepare_hessian (then desc_act, act_group_aware and damp_percent were applied there).
    act_group_aware: process whole groups in order of importance (see group_aware_order); needs group_size
    > 0 and excludes desc_act and static_groups. The result loads like a layer without act-order.
    """
    start = time.perf_counter()
    label = name or "weight"
    check_bits(bits)
    check_group_size(group_size)
    hessian = checked_layer_inputs(weight, hessian, block_size=block_size, desc_act=desc_act,
                                   damp_percent=damp_percent, name=name, act_group_aware=act_group_aware,
                                   group_size=group_size)
    group_aware = hessian.group_aware is not None
    if group_aware and static_groups:
        raise ValueError(f"{label}: act_group_aware fits each group's grid when the group starts; it does not "
                         "combine with static_groups")
    rows, columns = weight.shape
    dead, perm, R, damp_used = hessian.dead, hessian.perm, hessian.cholesky, hessian.damp_percent

    W = weight.detach().to(torch.float32)  # read only below
    if bool(dead.any()):
        W = W.clone()
        W[:, dead] = 0.0

    # Grids fixed before the loop: one for the whole row (group_size -1) or, with static groups, one per
    # group of the original channel order, both from the unquantized weight.
    fixed_scale = fixed_zero = None
    width = columns if group_size == -1 else group_size
    groups = num_groups(columns, group_size)
    if group_size == -1 or static_groups:
        fixed_scale = torch.empty(rows, groups, device=W.device)
        fixed_zero = torch.empty(rows, groups, device=W.device)
        for g in range(groups):
            s, z = fit_grid(W[:, g * width:(g + 1) * width], bits, sym, scale_dtype)
            fixed_scale[:, g], fixed_zero[:, g] = s, z

    if perm is not None:
        W = W.index_select(1, perm)

    # The group of each column in processing order, for fixed grids.
    original = perm if perm is not None else torch.arange(columns, device=W.device)
    column_group = torch.zeros_like(original) if group_size == -1 else original // group_size
    if fixed_scale is None:
        # Grids fitted inside the op need each group whole inside one block: blocks of whole groups.
        block = group_size * max(1, block_size // group_size)
    else:
        block = block_size

    # The lazy-batch update without U = R^-1: the errors E of the finished columns satisfy W - Q = E U, so
    # what they add to a block [i1, i2) is E[:, :i1] U[:i1, blk] = -(W - Q)[:, :i1] R[:i1, blk] U[blk, blk]
    # (block inverse of the triangular R), and U's diagonal blocks are the inverses of R's. This needs one
    # Cholesky and no triangular inverse of the whole matrix (K^3/6 multiply-adds fewer).
    run_group = (perm[::group_size] // group_size).tolist() if group_aware else None
    # The integers, stored transposed ([K, N]) as the packed checkpoint layout runs along K.
    Q_t = torch.empty(columns, rows, dtype=torch.int32, device=W.device)
    # W - dequantized, filled block by block, stored transposed: the finished columns are one contiguous slab.
    residual_t = torch.empty(columns, rows, device=W.device)
    scale = torch.empty(rows, groups, device=W.device)
    zero = torch.empty(rows, groups, device=W.device)
    error = 0.0
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        U1 = invert_lower_triangular(R[i1:i2, i1:i2].t()).t().contiguous()
        if not _all_finite(U1):
            raise ValueError(f"{label}: the damped Hessian is too ill-conditioned to invert in float32; "
                             "raise damp_percent")
        working = W[:, i1:i2]
        if i1:
            working = torch.addmm(working, finished_columns_product(residual_t[:i1], R[:i1, i1:i2]), U1)
        s_cols = z_cols = None
        if fixed_scale is not None:
            s_cols = fixed_scale[:, column_group[i1:i2]].contiguous()
            z_cols = fixed_zero[:, column_group[i1:i2]].contiguous()
        q, dequantized, err, s_used, z_used = _gptq_block(working.contiguous(), U1, bits, sym, group_size, i1,
                                                          s_cols, z_cols, scale_dtype)
        Q_t[i1:i2] = q.t()
        residual_t[i1:i2].copy_(torch.sub(W[:, i1:i2], dequantized).t())  # (sub's out= transposed: 7x slower)
        error += 0.5 * float(torch.linalg.vector_norm(err)) ** 2
        if fixed_scale is None:
            for c in range(i1, i2, group_size):
                # Processing runs of group_size are the checkpoint's groups, except in group-aware order,
                # where each run is one whole group in another place.
                g = run_group[c // group_size] if group_aware else c // group_size
                scale[:, g], zero[:, g] = s_used[:, c - i1], z_used[:, c - i1]

    if fixed_scale is not None:
        scale, zero = fixed_scale, fixed_zero
    if perm is not None:
        inverse = torch.argsort(perm)
        Q_t = Q_t.index_select(0, inverse)
    if perm is not None and not static_groups and group_size != -1 and not group_aware:
        # Group i holds the i-th run of group_size columns in processing order: g_idx[perm[i]] = i // group_size.
        g_idx = (torch.arange(columns, device=W.device) // group_size)[inverse]
    else:
        g_idx = default_g_idx(columns, group_size, W.device)

    packed = QuantizedWeight.from_integers(Q_t.t(), scale, zero, g_idx, bits, group_size, sym, scale_dtype)
    return GPTQWeight(**vars(packed), error=error, damp_percent=damp_used, perm=perm,
                      seconds=time.perf_counter() - start, name=name)


def inverse_hessian_factor(hessian: torch.Tensor, damp_percent: float = 0.01, name: Optional[str] = None
                           ) -> Tuple[torch.Tensor, float]:
    """U, the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, and the damp_percent used."""
    R, damp = hessian_factor(hessian.to(torch.float32), damp_percent, name or "weight")
    return invert_lower_triangular(R.t()).t().contiguous(), damp


def hessian_factor(H: torch.Tensor, damp_percent: float = 0.01, label: str = "weight") -> Tuple[torch.Tensor, float]:
    """R, upper triangular with H + damp * mean(diag H) * I = R R^T, and the damp_percent used.

    With J the reversal permutation and J H J = L L^T (L lower), R = J L J, and R^-1 = J L^-1 J is U, the upper
    Cholesky factor of H^-1 that GPTQ's updates use (H^-1 = U^T U). GPTQ needs only R and U's diagonal blocks,
    so one Cholesky replaces the textbook route (Cholesky, cholesky_inverse, Cholesky of the inverse: about
    four times the work), and H^-1, whose rounding errors the second Cholesky would amplify, is never formed.
    """
    columns = H.shape[0]
    # |diag| so that an invalid Hessian with a negative mean diagonal still gets positive damping.
    mean_diag = float(torch.diag(H).abs().mean()) or 1.0
    damp = damp_percent
    for step in range(MAX_DAMP_STEPS + 1):
        R, info = _damped_factor(H, damp * mean_diag)
        if info == 0 and _all_finite(R) and bool((torch.diagonal(R) > 0).all()):
            if step:
                warnings.warn(f"{label}: the Hessian is not positive definite with damp_percent="
                              f"{damp_percent:g}; used damp_percent={damp:g}", RuntimeWarning, stacklevel=3)
            return R, damp
        damp = max(damp * DAMP_GROWTH, 0.01) if damp > 0 else 0.01
    # Unreachable for a finite Hessian; kept so that a pathological one degrades to round-to-nearest (an
    # identity Hessian) instead of stopping a long model run.
    warnings.warn(f"{label}: the Hessian stayed singular after {MAX_DAMP_STEPS} damping steps; quantizing "
                  "this layer as round-to-nearest", RuntimeWarning, stacklevel=3)
    return torch.eye(columns, device=H.device, dtype=H.dtype), math.inf


def _damped_factor(H: torch.Tensor, damp: float) -> Tuple[torch.Tensor, int]:
    """R with H + damp * I = R R^T (R = J L J for J (H + damp I) J = L L^T), and 0 or LAPACK's failure info."""
    if H.dtype == torch.float32 and ops.has_kernel(H.device.type, "hessian_factor"):
        return ops.hessian_factor(H, damp)  # the same factor without torch's extra passes over the matrix
    reversed_h = H.flip((0, 1))
    reversed_h.diagonal().add_(damp)
    # H is symmetric, so its transpose view is the same matrix in the column-major layout LAPACK works in:
    # the factorisation starts from a plain copy instead of a transposing one, and L comes back column-major,
    # so L^T is contiguous and R = J L J is one reversal of it (kept column-major).
    L, info = torch.linalg.cholesky_ex(reversed_h.t())
    return L.t().flip((0, 1)).t(), int(info)


_onednn_linear = None  # torch.ops.mkldnn._linear_pointwise where it is the faster route, False where not


def _use_onednn(t: torch.Tensor) -> bool:
    global _onednn_linear
    if t.device.type != "cpu" or t.dtype != torch.float32:
        return False
    if _onednn_linear is None:
        op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
        # MKL runs its AVX2 code on AVX-512 CPUs it does not recognise (AMD), oneDNN its AVX-512 code.
        _onednn_linear = op if op is not None and torch.backends.cpu.get_cpu_capability() == "AVX512" else False
    return _onednn_linear is not False


def finished_columns_product(residual_t: torch.Tensor, R_block: torch.Tensor) -> torch.Tensor:
    """residual_t^T @ R_block ([N, i1] x [i1, width]): the lazy-batch update's big product, most of GPTQ's time.

    residual_t is the finished columns' residual stored transposed ([i1, N], contiguous). On AVX-512 CPUs
    oneDNN's linear computes the product about 1.7x as fast as torch.mm (MKL), reading residual_t in place
    as a transposed weight; full float32 precision either way.
    """
    global _onednn_linear
    if _use_onednn(residual_t):
        try:
            return _onednn_linear(R_block.t().contiguous(), residual_t.t(), None, "none", [], "").t()
        except RuntimeError:  # an op whose signature changed: use torch.mm from now on
            _onednn_linear = False
    return residual_t.t() @ R_block


def float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear, through oneDNN where that is the faster route for float32 on the CPU (as above)."""
    global _onednn_linear
    if _use_onednn(x) and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        try:
            return _onednn_linear(x, weight, bias, "none", [], "")
        except RuntimeError:
            _onednn_linear = False
    return torch.nn.functional.linear(x, weight, bias)


# Below this size a triangular solve against the identity inverts fastest; above, splitting into halves
# turns most of the work into two matrix products, which BLAS runs several times faster than a solve.
_TRIANGULAR_LEAF = 256


def invert_lower_triangular(L: torch.Tensor) -> torch.Tensor:
    """L^-1 for lower-triangular L: [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]], recursively."""
    n = L.shape[0]
    if n <= _TRIANGULAR_LEAF:
        return torch.linalg.solve_triangular(L, torch.eye(n, device=L.device, dtype=L.dtype), upper=False)
    h = n // 2
    a_inv = invert_lower_triangular(L[:h, :h])
    d_inv = invert_lower_triangular(L[h:, h:])
    out = torch.zeros_like(L)
    out[:h, :h] = a_inv
    out[h:, h:] = d_inv
    out[h:, :h] = -(d_inv @ L[h:, :h]) @ a_inv
    return out


def _gptq_block(W1, U1, bits, sym, group_size, column_offset, scale, zero, scale_dtype):
    if ops.has_kernel(W1.device.type, "gptq_block"):
        return ops.gptq_block(W1, U1, bits, sym, group_size, column_offset, scale, zero, scale_dtype)
    return gptq_block_torch(W1, U1, bits, sym, group_size, column_offset, scale, zero, scale_dtype)


def gptq_block_torch(W1: torch.Tensor, U1: torch.Tensor, bits: int, sym: bool, group_size: int,
                     column_offset: int, scale: Optional[torch.Tensor] = None, zero: Optional[torch.Tensor] = None,
                     scale_dtype: torch.dtype = torch.float16):
    """The same contract as ops.gptq_block, one column at a time in PyTorch (for devices without the op)."""
    W1 = W1.clone()
    rows, width = W1.shape
    fit = scale is None
    q = torch.empty(rows, width, dtype=torch.int32, device=W1.device)
    deq, err = torch.empty_like(W1), torch.empty_like(W1)
    s_out = torch.empty_like(W1) if fit else scale.clone()
    z_out = torch.empty_like(W1) if fit else zero.clone()
    s = z = None
    for j in range(width):
        if fit:
            if (column_offset + j) % group_size == 0:
                s, z = fit_grid(W1[:, j:j + group_size], bits, sym, scale_dtype)
            s_out[:, j], z_out[:, j] = s, z
        w = W1[:, j:j + 1]
        qj = quantize_to_grid(w, s_out[:, j], z_out[:, j], bits)
        dq = dequantize_from_grid(qj, s_out[:, j], z_out[:, j])
        e = (w - dq) / U1[j, j]
        W1[:, j:] -= e * U1[j:j + 1, j:]
        q[:, j], deq[:, j], err[:, j] = qj[:, 0].to(torch.int32), dq[:, 0], e[:, 0]
    return q, deq, err, s_out, z_out
