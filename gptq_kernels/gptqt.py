"""GPTQT for one linear layer: GPTQ whose quantizer is a binary coding (Guo, Lang, Ren, 2024, arXiv 2407.02891).

GPTQT quantizes twice: (1) linear quantization to a relatively high ``intermediate_bits`` grid, (2) conversion of
those integers to a binary coding with ``planes`` sign planes, ``w = sum_i alpha_i * s_i + offset`` with
``s_i`` in {-1, +1}, per output channel and group; a "re-explore" step searches the linear grid's scale again,
because step 2 changes which range matters. Only the binary coding is stored (gptq_kernels.bcq_format).

The paper (we worked from its abstract) fixes the two steps, the re-explore and the merge into one binary
coding; how each is done here is our choice, made on per-layer measurements of the calibration loss
tr((W - Q) H (W - Q)^T) on SmolLM2-135M layers (benchmarks/results/gptqt_notes.md has the numbers):

* Error feedback sees the final quantizer. The GPTQ column loop quantizes every weight to a binary-coded
  level, so its updates compensate the error of both steps. A group's coding is fitted just before its first
  column is quantized, from the group's weights as the earlier columns' feedback left them (as GPTQ fits its
  grids); ``group_size=-1`` or ``static_groups`` fit the codings from the unquantized weight before the loop.
* Step 1 of a group: ``2^intermediate_bits`` levels evenly spanning the group's range (``[min, max]``, or
  ``[-max|w|, max|w|]`` with ``sym``), shrunk about its centre by a re-explore multiplier. The default of
  5 intermediate bits gave 9 % less loss than 4 at 3 planes; 6 gave 2-3 % less again at twice the fit
  time. Each output
  channel's rounded weights form a histogram over those levels in which a column counts with its GPTQ
  importance ``1 / U[j, j]^2`` (the weight GPTQ's own objective gives the column's error).
* Step 2, bcq_fit.fit_binary_coding: alpha, offset and the level-to-code assignment minimising the weighted
  squared error on that histogram. ``planes == intermediate_bits`` reproduces the step-1 grid exactly.
* Re-explore: every multiplier in ``reexplore`` is tried and, separately for each output channel and group,
  the one whose coding has the lowest importance-weighted error on the group's current weights is kept
  (alpha and offset are stored per channel and group anyway, so the choice costs no storage). The default
  0.7, 0.8, 0.9, 1.0 lowered the loss by about 3 % at 3 planes, 1 % at 2 planes; wider grids did not help.
* Inside the loop a weight goes to its nearest binary-coded level (``rounding="nearest"``);
  ``rounding="twice"`` rounds to the step-1 grid first and maps that level to its code, the literal
  composition of the two steps, which measured 2-4 % worse.
* ``refit`` (our addition): once every code is chosen, alpha and offset of each output channel (all its
  groups together) are solved again by least squares on the damped calibration loss with the codes fixed.
  They are free parameters of the stored format, so this costs nothing at inference; it lowered the loss by
  about 5 %. Running the column loop again with the refitted levels did not lower it further.
* alpha and offset are rounded to their storage dtype (float16) before use, so the loop quantizes to the
  levels the stored tensors reproduce.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

from . import bcq_format
from .bcq_fit import binary_coding_levels, code_signs, fit_binary_coding, nearest_code
from .format import check_group_size, default_g_idx, num_groups
from .gptq import checked_layer_inputs

#: Multipliers of the step-1 range tried by the re-explore search (1.0 = the group's full range).
DEFAULT_REEXPLORE = (0.7, 0.8, 0.9, 1.0)
ROUNDINGS = ("nearest", "twice")


@dataclass
class BCQWeight:
    """One layer's binary-coded weight in the gptq_kernels.bcq_format layout, and what the run measured.

    error: the GPTQ objective sum((w - q)^2 / U[j, j]^2) / 2 of the column loop (as GPTQWeight.error; the
        refit afterwards lowers the calibration loss further but is not counted in it).
    damp_percent: the damping actually used; perm: the act-order column order or None.
    multipliers: [G, N] the re-explore multiplier each group and output channel kept.
    """

    qplanes: torch.Tensor
    alpha: torch.Tensor
    offset: torch.Tensor
    g_idx: torch.Tensor
    planes: int
    group_size: int
    intermediate_bits: int
    error: float = 0.0
    damp_percent: float = 0.0
    perm: Optional[torch.Tensor] = None
    multipliers: Optional[torch.Tensor] = None
    seconds: float = 0.0
    name: Optional[str] = None

    @property
    def bits(self) -> int:
        """Stored bits per weight (the number of sign planes), not counting alpha and offset."""
        return self.planes

    @property
    def in_features(self) -> int:
        return self.g_idx.numel()

    @property
    def out_features(self) -> int:
        return self.offset.shape[1]

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The bcq_format tensors: qplanes, alpha, offset, g_idx."""
        return {"qplanes": self.qplanes, "alpha": self.alpha, "offset": self.offset, "g_idx": self.g_idx}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] (nn.Linear convention) these tensors encode."""
        return bcq_format.dequantize(self.qplanes, self.alpha, self.offset, self.g_idx, self.group_size,
                                     dtype=dtype).t()

    def to_linear(self, bias: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None):
        """A BCQLinear holding these tensors (alpha, offset and bias in `dtype`, default alpha's dtype)."""
        from .bcq_linear import BCQLinear

        return BCQLinear.from_tensors(self.tensors(), self.group_size, bias=bias, dtype=dtype)


class _GroupCoding(NamedTuple):
    """The binary coding of one group for every output channel, as the column loop uses it."""

    alpha: torch.Tensor          # [N, planes], values of the storage dtype
    offset: torch.Tensor         # [N]
    order: torch.Tensor          # [N, L] codes by ascending level
    sorted_levels: torch.Tensor  # [N, L]
    mids: torch.Tensor           # [N, L - 1] mid-points of consecutive sorted levels
    lo: torch.Tensor             # [N] step-1 grid: level j is lo + j * step
    step: torch.Tensor           # [N]
    multiplier: torch.Tensor     # [N]


def _coding(alpha, offset, lo, step, multiplier) -> _GroupCoding:
    levels = binary_coding_levels(alpha, offset)
    order = torch.argsort(levels, dim=-1)
    sorted_levels = levels.gather(-1, order)
    mids = (0.5 * (sorted_levels[:, 1:] + sorted_levels[:, :-1])).contiguous()
    return _GroupCoding(alpha, offset, order, sorted_levels, mids, lo, step, multiplier)


def _fit_group(w: torch.Tensor, importance: torch.Tensor, planes: int, intermediate_bits: int, sym: bool,
               multipliers: Sequence[float], rounding: str, scale_dtype: torch.dtype) -> _GroupCoding:
    """Steps 1 and 2 with the re-explore search for one group: w [N, C] (current weights), importance [C]."""
    rows, cols = w.shape
    levels_1 = 1 << intermediate_bits
    if sym:
        hi = w.abs().amax(-1)
        lo = -hi
    else:
        lo, hi = w.amin(-1), w.amax(-1)
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    half = torch.where(half > 0, half, torch.ones_like(half))  # a constant group: any range holds it
    m = torch.tensor(multipliers, dtype=w.dtype, device=w.device)
    r = m.numel()
    half_r = m[:, None] * half  # [R, N]: every multiplier at once
    lo_r = centre - half_r
    step_r = 2 * half_r / (levels_1 - 1)
    q = torch.clamp(torch.round((w - lo_r[..., None]) / step_r[..., None]), 0, levels_1 - 1).long()  # [R, N, C]
    hist = torch.zeros(r, rows, levels_1, dtype=w.dtype, device=w.device)
    hist.scatter_add_(-1, q, importance.to(w.dtype).expand_as(q).contiguous())
    grid = torch.arange(levels_1, dtype=w.dtype, device=w.device).expand(r * rows, levels_1)
    fit = fit_binary_coding(grid, hist.view(r * rows, levels_1), planes)
    # From step-1 units to weights, rounded to the storage dtype before anything uses them.
    alpha = (fit.alpha.view(r, rows, planes) * step_r[..., None]).to(scale_dtype).float()
    offset = (lo_r + fit.offset.view(r, rows) * step_r).to(scale_dtype).float()
    levels = binary_coding_levels(alpha, offset).view(r * rows, -1)
    if rounding == "twice":
        positions = lo_r.view(-1, 1) + step_r.view(-1, 1) * torch.arange(levels_1, device=w.device)
        codes = nearest_code(positions, levels).view(r, rows, levels_1).gather(-1, q)
    else:
        codes = nearest_code(w.expand(r, rows, cols).reshape(r * rows, cols), levels).view(r, rows, cols)
    error = (importance * (w - levels.view(r, rows, -1).gather(-1, codes)) ** 2).sum(-1)  # [R, N]
    pick = error.argmin(0)
    channel = torch.arange(rows, device=w.device)
    return _coding(alpha[pick, channel], offset[pick, channel], lo_r[pick, channel], step_r[pick, channel],
                   m[pick])


def _refit(W: torch.Tensor, codes: torch.Tensor, column_group: torch.Tensor, groups: int, planes: int,
           H: torch.Tensor) -> torch.Tensor:
    """alpha and offset minimising tr((W - Q) H (W - Q)^T) with every code fixed, per output channel.

    W [N, K], codes [N, K] and H [K, K] in processing order, column_group [K]: the group of each column.
    Q[n] = X[n] @ theta[n] with X[n][k] = (1, signs of codes[n, k]) placed in the columns of group g(k), so
    theta[n] = (X^T H X)^-1 X^T H w[n]: one (G * (planes + 1))-square system per channel, built group by group
    (N K^2 (planes + 1) multiply-adds). Returns theta [N, G, planes + 1] (offset first).
    """
    rows, columns = W.shape
    p = planes + 1
    X = torch.cat([torch.ones(rows, columns, 1, device=W.device), code_signs(planes, device=W.device)[codes]], -1)
    members = [(column_group == g).nonzero()[:, 0] for g in range(groups)]
    gram = torch.empty(rows, groups, p, groups, p, dtype=torch.float64, device=W.device)
    rhs = torch.empty(rows, groups, p, dtype=torch.float64, device=W.device)
    for g, cols in enumerate(members):
        HX = torch.matmul(H[:, cols], X[:, cols])  # [N, K, p]: H times group g's block of the design
        for h, other in enumerate(members):
            gram[:, g, :, h] = torch.matmul(HX[:, other].transpose(1, 2), X[:, other]).double()
        rhs[:, g] = torch.matmul(W[:, None, :], HX)[:, 0].double()
    gram = gram.view(rows, groups * p, groups * p)
    # A relative ridge keeps the systems solvable where a plane has one sign over a whole group.
    ridge = 1e-9 * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    eye = torch.eye(groups * p, dtype=torch.float64, device=W.device)
    theta = torch.linalg.solve(gram + ridge[:, None, None] * eye, rhs.view(rows, -1))
    return theta.view(rows, groups, p).to(W.dtype)


def quantize_weight_gptqt(weight: torch.Tensor, hessian, *, planes: int = 3, intermediate_bits: int = 5,
                          group_size: int = 128, sym: bool = True, desc_act: bool = False,
                          static_groups: bool = False, damp_percent: float = 0.01, block_size: int = 128,
                          reexplore: Optional[Sequence[float]] = DEFAULT_REEXPLORE, rounding: str = "nearest",
                          refit: bool = True, name: Optional[str] = None,
                          scale_dtype: torch.dtype = torch.float16) -> BCQWeight:
    """GPTQT-quantizes weight [N, K] (nn.Linear layout) given the Hessian [K, K] of its inputs.

    planes: sign planes of the stored coding, the bits per weight (1..8; the kernels cover 2 and 3).
    intermediate_bits: bits of the step-1 grid, planes..8 (planes == intermediate_bits: the coding is that
        uniform grid, i.e. GPTQ with a per-group grid).
    reexplore: multipliers of the step-1 range to try; None or () tries only the full range.
    rounding: "nearest" or "twice"; refit: solve alpha and offset again after the loop (module docstring).
    group_size, sym (of the step-1 grid), desc_act, static_groups, damp_percent, block_size, dead channels,
    NaN/Inf checks and damping of non-positive-definite Hessians are those of gptq_kernels.quantize_weight;
    ``hessian`` may be a PreparedHessian from prepare_hessian (then desc_act and damp_percent were applied there).
    """
    start = time.perf_counter()
    label = name or "weight"
    bcq_format.check_planes(planes)
    check_group_size(group_size)
    if not isinstance(intermediate_bits, int) or not planes <= intermediate_bits <= 8:
        raise ValueError(f"{label}: intermediate_bits must be an int from planes={planes} to 8, "
                         f"got {intermediate_bits!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"{label}: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    multipliers = tuple(float(x) for x in reexplore) if reexplore else (1.0,)
    if not all(0 < x <= 2 for x in multipliers):
        raise ValueError(f"{label}: reexplore multipliers must lie in (0, 2], got {tuple(reexplore)}")
    hessian = checked_layer_inputs(weight, hessian, block_size=block_size, desc_act=desc_act,
                                   damp_percent=damp_percent, name=name)
    rows, columns = weight.shape
    dead, perm, U = hessian.dead, hessian.perm, hessian.factor

    W = weight.detach().to(torch.float32).clone()
    W[:, dead] = 0.0
    importance = U.diagonal().pow(-2)  # processing order: GPTQ's objective weighs column j by 1 / U[j, j]^2
    original = perm if perm is not None else torch.arange(columns, device=W.device)
    groups = num_groups(columns, group_size)
    width = columns if group_size == -1 else group_size
    fit = dict(planes=planes, intermediate_bits=intermediate_bits, sym=sym, multipliers=multipliers,
               rounding=rounding, scale_dtype=scale_dtype)

    codings: List[Optional[_GroupCoding]] = [None] * groups
    fixed = group_size == -1 or static_groups
    if fixed:  # codings of the groups of the original column order, from the unquantized weight
        importance_original = torch.empty_like(importance)
        importance_original[original] = importance
        for g in range(groups):
            cols = slice(g * width, min((g + 1) * width, columns))
            codings[g] = _fit_group(W[:, cols], importance_original[cols], **fit)
        column_group = torch.zeros_like(original) if group_size == -1 else original // group_size
        block = block_size
    else:  # group i: the i-th run of group_size columns in processing order; blocks hold whole groups
        column_group = torch.arange(columns, device=W.device) // group_size
        block = group_size * max(1, block_size // group_size)
    groups_of_column = column_group.tolist()
    original_weight = W[:, perm] if perm is not None else W.clone()
    W = original_weight.clone()

    codes = torch.empty(rows, columns, dtype=torch.int64, device=W.device)
    top = (1 << intermediate_bits) - 1
    error = 0.0
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        err = torch.empty_like(W1)
        for j in range(i2 - i1):
            g = groups_of_column[i1 + j]
            if codings[g] is None:  # first column of a group: fit its coding on the current weights
                codings[g] = _fit_group(W1[:, j:j + group_size], importance[i1 + j:i1 + j + group_size], **fit)
            c = codings[g]
            w = W1[:, j]
            if rounding == "twice":
                level = torch.clamp(torch.round((w - c.lo) / c.step), 0, top).long()[:, None]
                position = torch.searchsorted(c.mids, c.lo[:, None] + c.step[:, None] * level)
            else:
                position = torch.searchsorted(c.mids, w[:, None].contiguous())
            codes[:, i1 + j] = c.order.gather(1, position)[:, 0]
            e = (w - c.sorted_levels.gather(1, position)[:, 0]) / U1[j, j]
            err[:, j] = e
            W1[:, j + 1:].addr_(e, U1[j, j + 1:], alpha=-1.0)
        error += 0.5 * float(torch.linalg.vector_norm(err)) ** 2
        if i2 < columns:
            W[:, i2:].addmm_(err, U[i1:i2, i2:], alpha=-1.0)  # the lazy-batch update of the later columns

    alpha = torch.stack([c.alpha for c in codings], 1)  # [N, G, planes]
    offset = torch.stack([c.offset for c in codings], 1)  # [N, G]
    if refit and hessian.damp_percent < float("inf"):  # inf: the Hessian was replaced by the identity
        R = hessian.cholesky
        damped = R @ R.t()  # the damped Hessian GPTQ used, in processing order
        theta = _refit(original_weight, codes, column_group, groups, planes, damped)
        offset, alpha = theta[..., 0], theta[..., 1:]

    if perm is not None:
        inverse = torch.argsort(perm)
        codes = codes[:, inverse]
    if perm is not None and not fixed:
        g_idx = (torch.arange(columns, device=W.device) // group_size)[inverse].to(torch.int32)
    else:
        g_idx = default_g_idx(columns, group_size, W.device)
    bits = (codes.t()[None] >> torch.arange(planes, device=W.device)[:, None, None]) & 1  # [planes, K, N]
    return BCQWeight(bcq_format.pack_planes(bits), alpha.permute(1, 2, 0).to(scale_dtype).contiguous(),
                     offset.t().to(scale_dtype).contiguous(), g_idx, planes, group_size, intermediate_bits,
                     error=error, damp_percent=hessian.damp_percent, perm=perm,
                     multipliers=torch.stack([c.multiplier for c in codings]),
                     seconds=time.perf_counter() - start, name=name)
