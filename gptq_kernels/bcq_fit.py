"""Fitting a binary coding to weighted values: GPTQT's step 2, vectorised over rows (output channels x groups).

A binary coding with ``planes`` planes has ``L = 2^planes`` levels ``offset + sum_i alpha_i * s_i``
(``s_i`` in {-1, +1}); code ``c`` selects the signs, bit ``i`` of ``c`` set meaning ``s_i = +1`` (the
bcq_format convention, so a code's bits are the qplanes bits). fit_binary_coding chooses alpha, offset and
every value's code to minimise the weighted squared error. The problem is not convex (it is a 1-D clustering
whose centres must be the levels of a binary coding), so it alternates least squares and nearest-level
assignment from several starts and keeps the best result per row; see fit_binary_coding for the starts.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from . import bcq_format

#: Alternating least-squares rounds per start. On the 2^4..2^6 histogram levels GPTQT fits, the error after
#: 6 rounds is within 0.3 % of that after 16 (SmolLM2-135M layers).
FIT_ITERATIONS = 6


class BinaryCodingFit(NamedTuple):
    """alpha [M, planes] (non-negative, ascending), offset [M], codes [M, P] (each value's code) and error [M],
    the weighted squared error sum_p weight * (value - level)^2 of that coding."""

    alpha: torch.Tensor
    offset: torch.Tensor
    codes: torch.Tensor
    error: torch.Tensor


def code_signs(planes: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[2^planes, planes]: row c holds the signs of code c (bit i set: s_i = +1, clear: s_i = -1)."""
    codes = torch.arange(1 << planes, device=device)
    bits = (codes[:, None] >> torch.arange(planes, device=device)) & 1
    return (bits * 2 - 1).to(dtype)


def binary_coding_levels(alpha: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """[..., 2^planes] levels of every code, from alpha [..., planes] and offset [...]."""
    signs = code_signs(alpha.shape[-1], alpha.dtype, alpha.device)
    return offset[..., None] + alpha @ signs.t()


def nearest_code(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Code of the level nearest to each value: values [M, P], levels [M, L] -> [M, P] int64."""
    order = torch.argsort(levels, dim=-1)
    sorted_levels = levels.gather(-1, order)
    mids = 0.5 * (sorted_levels[..., 1:] + sorted_levels[..., :-1])
    position = torch.searchsorted(mids.contiguous(), values.contiguous())
    return order.gather(-1, position)


def fit_binary_coding(values: torch.Tensor, weights: Optional[torch.Tensor], planes: int, *,
                      iterations: int = FIT_ITERATIONS) -> BinaryCodingFit:
    """Fits a binary coding with `planes` planes to each row of values [M, P], weighted by weights [M, P].

    Minimises sum_p weights[m, p] * (values[m, p] - level(m, p))^2 over alpha [M, planes], offset [M] and the
    code of every value. GPTQT passes the 2^b integer levels of its step-1 grid (the same row for every
    channel, broadcast) with their importance-weighted counts as weights; raw weights with their Hessian
    diagonal work as well. weights=None means ones; a row whose weights are all zero is fitted unweighted
    (its reported error is 0).

    Starts: (1) the uniform 2^planes grid over the row's whole value range, so values that such a grid
    holds (e.g. the integers 0..2^b-1 with planes == b) are reproduced exactly; (2) greedy residual
    binarisation (alpha_i = weighted mean |residual|, largest first); (3) the optimal free 2^planes-level
    quantizer (weighted 1-D k-means, exact by dynamic programming) projected on binary codings by least
    squares, once per level order a coding can have; (4) the same with 2^planes - 1 clusters given all codes
    but the lowest, or all but the highest (optimal codings often leave an outer level unused: the levels'
    additive structure puts it where no value is). Each start is refined by `iterations` rounds of (codes
    fixed: weighted least squares for offset and alpha; coding fixed: every value to its nearest level), and
    the best coding seen is returned in canonical form.
    """
    bcq_format.check_planes(planes)
    if values.dim() != 2:
        raise ValueError(f"fit_binary_coding: values must be [rows, points], got shape {tuple(values.shape)}")
    dtype = values.dtype if values.dtype in (torch.float32, torch.float64) else torch.float32
    v = values.to(dtype)
    w = torch.ones_like(v) if weights is None else torch.broadcast_to(weights.to(dtype), v.shape).clone()
    if bool((w < 0).any()):
        raise ValueError("fit_binary_coding: weights must be non-negative")
    empty = w.sum(-1) <= 0
    w[empty] = 1.0
    rows = v.shape[0]
    design = _design(planes, dtype, v.device)

    starts = [_uniform_start(v.amin(-1), v.amax(-1), planes), _greedy_start(v, w, planes)]
    full, fewer = _kmeans_1d(v, w, 1 << planes)
    for order in _level_orders(planes):
        for clusters, codes in ((full, order), (fewer, order[1:]), (fewer, order[:-1])):
            starts.append(_least_squares(v, w, torch.tensor(codes, device=v.device)[clusters], design))

    # All starts side by side: S * M rows.
    alpha = torch.cat([a for a, _ in starts])
    offset = torch.cat([o for _, o in starts])
    vs, ws = v.repeat(len(starts), 1), w.repeat(len(starts), 1)
    best_error = torch.full((alpha.shape[0],), float("inf"), dtype=dtype, device=v.device)
    best_alpha, best_offset = alpha, offset
    for step in range(iterations + 1):
        levels = offset[:, None] + alpha @ design[:, 1:].t()
        codes = nearest_code(vs, levels)
        error = (ws * (vs - levels.gather(-1, codes)) ** 2).sum(-1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_alpha = torch.where(better[:, None], alpha, best_alpha)
        best_offset = torch.where(better, offset, best_offset)
        if step < iterations:
            alpha, offset = _least_squares(vs, ws, codes, design)

    # The best start per row, in canonical form: alpha >= 0 (a plane's signs flip with its alpha), ascending.
    pick = best_error.view(len(starts), rows).argmin(0)
    index = pick * rows + torch.arange(rows, device=v.device)
    alpha, offset = best_alpha[index].abs().sort(dim=-1).values, best_offset[index]
    levels = offset[:, None] + alpha @ design[:, 1:].t()
    codes = nearest_code(v, levels)
    w[empty] = 0.0
    error = (w * (v - levels.gather(-1, codes)) ** 2).sum(-1)
    return BinaryCodingFit(alpha, offset, codes, error)


# ------------------------------------------------------------------------------------------------ starts
def _design(planes: int, dtype, device) -> torch.Tensor:
    """[L, 1 + planes]: each code's row of the least-squares design (1 for the offset, then its signs)."""
    return torch.cat([torch.ones(1 << planes, 1, dtype=dtype, device=device), code_signs(planes, dtype, device)], 1)


def _uniform_start(lo: torch.Tensor, hi: torch.Tensor, planes: int):
    # Levels lo, lo + d, ..., hi (d = (hi - lo) / (2^planes - 1)) are offset + sum_i alpha_i s_i with
    # offset = (lo + hi) / 2 and alpha_i = d * 2^i / 2 (i = 0 .. planes-1).
    d = (hi - lo) / ((1 << planes) - 1)
    steps = torch.pow(2.0, torch.arange(planes, dtype=lo.dtype, device=lo.device))
    return 0.5 * d[:, None] * steps, 0.5 * (lo + hi)


def _greedy_start(v: torch.Tensor, w: torch.Tensor, planes: int):
    total = w.sum(-1)
    offset = (w * v).sum(-1) / total
    residual, alphas = v - offset[:, None], []
    for _ in range(planes):
        a = (w * residual.abs()).sum(-1) / total
        alphas.append(a)
        residual = residual - a[:, None] * torch.where(residual >= 0, 1.0, -1.0).to(v.dtype)
    return torch.stack(alphas[::-1], dim=-1), offset


def _level_orders(planes: int) -> List[List[int]]:
    """Codes by ascending level, for each order a canonical coding (0 <= alpha_0 <= alpha_1 <= ...) can have:
    one up to 2 planes; two for 3 planes (alpha_2 above or below alpha_0 + alpha_1). For 4 or more planes only
    the first of many orders is tried (a start, not a search)."""
    first = list(range(1 << planes))
    if planes == 3:
        return [first, [0, 1, 2, 4, 3, 5, 6, 7]]
    return [first]


def _least_squares(v: torch.Tensor, w: torch.Tensor, codes: torch.Tensor, design: torch.Tensor):
    """(alpha, offset) minimising the weighted error with every value's code fixed.

    The normal equations need only each code's total weight and weighted sum; they are solved in float64
    with a relative ridge of 1e-10, which keeps them solvable when a plane has the same sign for every value
    (that plane's alpha is then undetermined and the ridge sets it to about 0).
    """
    mass = torch.zeros(v.shape[0], design.shape[0], dtype=v.dtype, device=v.device).scatter_add_(-1, codes, w)
    moment = torch.zeros_like(mass).scatter_add_(-1, codes, w * v)
    p = design.shape[1]
    gram = (mass @ (design[:, :, None] * design[:, None, :]).view(-1, p * p)).view(-1, p, p).double()
    scale = gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    ridge = 1e-10 * torch.eye(p, dtype=torch.float64, device=v.device)
    theta = torch.linalg.solve(gram + scale[:, None, None] * ridge, (moment @ design).double()).to(v.dtype)
    return theta[:, 1:], theta[:, 0]


def _kmeans_1d(v: torch.Tensor, w: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cluster (by ascending value) of each value of every row of v [M, P] under the optimal weighted k-means
    with k clusters, and with k - 1. In one dimension optimal clusters are runs of the sorted values, so
    dynamic programming over run boundaries finds both exactly in O(k P^2) per row (P = 2^intermediate_bits
    here)."""
    rows, points = v.shape
    order = torch.argsort(v, dim=-1)
    vs, ws = v.gather(-1, order), w.gather(-1, order)
    zero = torch.zeros(rows, 1, dtype=v.dtype, device=v.device)
    cw = torch.cat([zero, ws.cumsum(-1)], -1)
    cm = torch.cat([zero, (ws * vs).cumsum(-1)], -1)
    cs = torch.cat([zero, (ws * vs * vs).cumsum(-1)], -1)
    # cost[m, i, j]: weighted squared error of sorted values i..j-1 about their mean (inf for i > j).
    dw = cw[:, None, :] - cw[:, :, None]
    dm = cm[:, None, :] - cm[:, :, None]
    cost = ((cs[:, None, :] - cs[:, :, None]) - dm * dm / dw.clamp_min(torch.finfo(v.dtype).tiny)).clamp_min(0)
    upper = torch.ones(points + 1, points + 1, dtype=torch.bool, device=v.device).triu()
    cost = cost.masked_fill(~upper, float("inf"))
    best = cost[:, 0, :]  # best[m, j]: values 0..j-1 in one cluster
    starts = []
    for _ in range(k - 1):  # one more cluster: values up to i as before, then i..j-1
        best, arg = (best[:, :, None] + cost).min(dim=1)
        starts.append(arg)
    position = torch.arange(points, device=v.device).expand(rows, points)

    def walk_back(count):  # where each of `count` clusters starts, last cluster first
        sorted_clusters = torch.empty(rows, points, dtype=torch.long, device=v.device)
        end = torch.full((rows,), points, dtype=torch.long, device=v.device)
        for c in range(count - 1, -1, -1):
            begin = starts[c - 1].gather(1, end[:, None])[:, 0] if c > 0 else torch.zeros_like(end)
            sorted_clusters[(position >= begin[:, None]) & (position < end[:, None])] = c
            end = begin
        return torch.empty_like(sorted_clusters).scatter_(1, order, sorted_clusters)

    return walk_back(k), walk_back(k - 1)
