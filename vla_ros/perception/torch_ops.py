"""The per-frame pruning and reuse decisions as torch ops on the encoder's device.

Same decisions as the numpy path (pruning.py, reuse.py) on the same inputs -- tests compare both on
the same frames -- but nothing leaves the device: scores, budget, top-k, spatial-coverage selection
and the reuse masks stay tensors, so a GPU pipeline never waits for the host mid-frame and the work
can be captured in a CUDA graph (all shapes here depend only on the bucketed token counts).

Decisions are made in float64, as the numpy path does, so ties and thresholds resolve identically.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch

from vla_ros.perception.fps_triton import disable_triton, farthest_point_fill, triton_fps_available

F64 = torch.float64


def budget_cap(num_tokens: int, keep_ratio: float) -> int:
    """round(keep_ratio * N) clipped to [1, N] (Python's round, as pruning.token_budget)."""
    return int(min(max(round(keep_ratio * num_tokens), 1), num_tokens))


def adaptive_budget(scores: torch.Tensor, cap: int, mass: float, min_tokens: int) -> torch.Tensor:
    """Device scalar: fewest tokens holding `mass` of the clipped scores, in [min(min_tokens, cap), cap];
    `cap` when the scores sum to zero. Same rule as pruning.token_budget(adaptive=True)."""
    s = scores.to(F64).clamp_min(0.0)
    total = s.sum()
    cum = torch.cumsum(torch.sort(s, descending=True).values, 0) / torch.where(total > 0, total, 1.0)
    # np.searchsorted(cum, mass) (side='left') = number of entries strictly below mass.
    needed = (cum < mass).sum() + 1
    needed = needed.clamp(min(min_tokens, cap), cap)
    return torch.where(total > 0, needed, torch.full_like(needed, cap))


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score, ties by ascending index (np.argsort(-s, kind='stable')).

    Does not rely on the sort being stable (small CUDA sorts need not be): after a first sort, equal
    scores form runs; sorting the unique keys run_id * n + index puts each run in index order."""
    n = scores.shape[0]
    vals, idx = torch.sort(scores.to(F64), descending=True)
    new_run = torch.ones_like(idx)
    new_run[1:] = (vals[1:] != vals[:-1]).to(idx.dtype)
    run_id = torch.cumsum(new_run, 0)
    return idx[torch.sort(run_id * n + idx).indices]


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest scores' indices, ascending; ties go to the lower index (stable, as np.argsort)."""
    return torch.sort(descending_order(scores)[:k]).values


def minmax_unit(x: torch.Tensor) -> torch.Tensor:
    x = x.to(F64)
    lo, hi = x.min(), x.max()
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))


def combined_saliency(attention: Optional[torch.Tensor], relevance: Optional[torch.Tensor], n: int,
                      device) -> torch.Tensor:
    total = torch.zeros(n, dtype=F64, device=device)
    for part in (attention, relevance):
        if part is not None:
            total = total + minmax_unit(part)
    return total


@functools.lru_cache(maxsize=8)
def _grid_distances_cpu(gh: int, gw: int) -> torch.Tensor:
    idx = torch.arange(gh * gw)
    coords = torch.stack([idx // gw, idx % gw], dim=1).to(F64)
    return (coords[:, None] - coords[None]).pow(2).sum(-1).sqrt()   # as np.linalg.norm, float64


_DIST_CACHE = {}


def grid_distances(gh: int, gw: int, device) -> torch.Tensor:
    key = (gh, gw, str(device))
    if key not in _DIST_CACHE:
        _DIST_CACHE[key] = _grid_distances_cpu(gh, gw).to(device)
    return _DIST_CACHE[key]


def spatial_coverage(saliency: torch.Tensor, budget: int, grid_hw: Tuple[int, int],
                     salient_fraction: float = 0.5, use_triton: Optional[bool] = None) -> torch.Tensor:
    """The most salient round(budget*salient_fraction) positions, then farthest-point sampling over
    the grid (saliency * 1e-3 breaks near-ties) up to `budget`; sorted ascending. Fixed shapes for a
    given budget, so it can be captured; on CUDA the sequential fill is one Triton kernel."""
    gh, gw = grid_hw
    n = gh * gw
    device = saliency.device
    sal = saliency.to(F64)
    sal = sal / (sal.abs().max() + 1e-12)
    n_salient = int(min(max(round(budget * salient_fraction), 0), budget))
    dists = grid_distances(gh, gw, device)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    chosen = torch.empty(budget, dtype=torch.long, device=device)
    if n_salient:
        first = top_indices(sal, n_salient)
        chosen[:n_salient] = first
        taken.index_fill_(0, first, True)       # (not taken[first] = True: that copies a host scalar)
        dist = dists[first].min(dim=0).values
    else:
        dist = torch.full((n,), 1e6, dtype=F64, device=device)
    n_fill = budget - n_salient
    if n_fill:
        tie = 1e-3 * sal
        if use_triton is None:
            use_triton = device.type == 'cuda' and triton_fps_available()
        if use_triton:
            try:
                chosen[n_salient:] = farthest_point_fill(dist, taken, tie, n_fill, gw)
            except Exception as exc:  # noqa: BLE001 - a Triton that cannot build the kernel: the torch loop
                disable_triton(exc)
                use_triton = False
        if not use_triton:
            neg_inf = torch.full((), -math.inf, dtype=F64, device=device)
            for i in range(n_fill):
                pick = torch.argmax(torch.where(taken, neg_inf, dist + tie))   # first max, as np.argmax
                chosen[n_salient + i] = pick
                taken.index_fill_(0, pick.view(1), True)
                dist = torch.minimum(dist, dists[pick])
    return torch.sort(chosen).values


def select_tokens(strategy: str, budget: int, grid_hw: Tuple[int, int], attention: Optional[torch.Tensor],
                  relevance: Optional[torch.Tensor], salient_fraction: float = 0.5,
                  device=None) -> torch.Tensor:
    """Kept grid indices (sorted, unique, int64 device tensor) -- pruning.select_tokens on device."""
    n = grid_hw[0] * grid_hw[1]
    ref = attention if attention is not None else relevance
    device = device if device is not None else (ref.device if ref is not None else 'cpu')
    if strategy == 'none':
        return torch.arange(n, device=device)
    if strategy == 'attention_topk':
        if attention is None:
            raise ValueError('attention_topk needs attention scores')
        return top_indices(attention, budget)
    if strategy == 'query':
        if relevance is None and attention is None:
            raise ValueError('query selection needs instruction relevance or attention scores')
        rel = (relevance if relevance is not None else attention).to(F64)
        if attention is not None:
            fb = attention.to(F64)
            rel = rel + 1e-3 * fb / (fb.max() + 1e-12)
        return top_indices(rel, budget)
    if strategy == 'spatial_coverage':
        return spatial_coverage(combined_saliency(attention, relevance, n, device), budget, grid_hw,
                                salient_fraction)
    raise ValueError(f'unknown pruning strategy {strategy!r}')


def div255(x: torch.Tensor) -> torch.Tensor:
    """x / 255 rounded as numpy rounds it. (Dividing a CUDA tensor by a Python scalar multiplies by
    the reciprocal, which can differ in the last bit and flip a threshold or a tie downstream.)"""
    return x / torch.full((), 255.0, dtype=x.dtype, device=x.device)


def patchify(resized: torch.Tensor, grid_hw: Tuple[int, int], patch: int) -> torch.Tensor:
    """[S,S,3] uint8 device image -> [N, p*p*3] float32 in [0,1] (same layout as VisionEncoder.patchify)."""
    h, w = grid_hw
    x = div255(resized[:h * patch, :w * patch].to(torch.float32)).reshape(h, patch, w, patch, 3)
    return x.permute(0, 2, 1, 3, 4).reshape(h * w, patch * patch * 3)


def patch_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row a.b / max(|a|^2, |b|^2) in float64 (reuse.patch_similarity)."""
    a, b = a.to(F64), b.to(F64)
    dot = (a * b).sum(-1)
    sq = torch.maximum((a * a).sum(-1), (b * b).sum(-1))
    return (dot + 1e-8) / (sq + 1e-8)


def recompute_first(static: torch.Tensor) -> torch.Tensor:
    """Order of the kept slots: to-recompute ones first, each group in ascending slot order."""
    k = static.shape[0]
    return torch.sort(static.to(torch.long) * k + torch.arange(k, device=static.device)).indices


def reuse_static_mask(kept: torch.Tensor, pixels: torch.Tensor, cached_pixels: torch.Tensor,
                      valid: torch.Tensor, threshold: float, relevance: Optional[torch.Tensor],
                      task_relevant_ratio: float) -> torch.Tensor:
    """[K] bool: kept position k may reuse its cache (valid, pixels similar, not among the most
    task-relevant ceil(ratio*K)). TemporalReuse.plan's rule on device."""
    static = valid[kept] & (patch_similarity(pixels[kept], cached_pixels[kept]) >= threshold)
    k = kept.shape[0]
    if relevance is not None and task_relevant_ratio > 0 and k:
        n_rel = int(math.ceil(task_relevant_ratio * k))
        order = descending_order(relevance[kept])[:n_rel]
        static = static.clone().index_fill_(0, order, False)
    return static


# ---------------------------------------------------------------------- colour relevance on the device
_HSV_SHIFT = 12


@functools.lru_cache(maxsize=4)
def _hsv_tables_cpu() -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's fixed-point division tables for 8-bit RGB->HSV (hrange 180):
    sdiv[i] = round((255 << 12) / i), hdiv[i] = round((180 << 12) / (6 i)), both 0 at i = 0."""
    i = torch.arange(256, dtype=F64)
    safe = torch.where(i > 0, i, torch.ones_like(i))
    sdiv = torch.where(i > 0, torch.round((255 << _HSV_SHIFT) / safe), torch.zeros_like(i))
    hdiv = torch.where(i > 0, torch.round((180 << _HSV_SHIFT) / (6.0 * safe)), torch.zeros_like(i))
    return sdiv.to(torch.int32), hdiv.to(torch.int32)


_HSV_DEVICE = {}


def _hsv_tables(device) -> Tuple[torch.Tensor, torch.Tensor]:
    key = str(device)
    if key not in _HSV_DEVICE:
        _HSV_DEVICE[key] = tuple(t.to(device) for t in _hsv_tables_cpu())
    return _HSV_DEVICE[key]


def rgb_to_hsv_u8(rgb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., 3] uint8 RGB -> (h, s, v) int32 with OpenCV's COLOR_RGB2HSV integer arithmetic (H 0..180),
    bit-exact (tested on all 2^24 colours against cv2)."""
    x = rgb.to(torch.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    sdiv, hdiv = _hsv_tables(rgb.device)
    half = 1 << (_HSV_SHIFT - 1)
    s = torch.div(diff * sdiv[v] + half, 1 << _HSV_SHIFT, rounding_mode='floor')
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.div(h * hdiv[diff] + half, 1 << _HSV_SHIFT, rounding_mode='floor')   # arithmetic >> 12
    h = torch.where(h < 0, h + 180, h)
    return h, s, v


def colour_relevance(rgb: torch.Tensor, grid_hw: Tuple[int, int], hue_table: torch.Tensor,
                     min_saturation: int, min_value: int) -> torch.Tensor:
    """relevance.colour_relevance on the device: [S,S,3] uint8 image, hue_table [256] bool ->
    [N] float32 fraction of each patch's pixels with a named hue (same values as the host path)."""
    h, s, v = rgb_to_hsv_u8(rgb)
    match = hue_table[h] & (s >= min_saturation) & (v >= min_value)
    gh, gw = grid_hw
    ph, pw = match.shape[0] // gh, match.shape[1] // gw
    counts = match[:gh * ph, :gw * pw].reshape(gh, ph, gw, pw).sum(dim=(1, 3), dtype=torch.int64)
    return (counts.to(F64) / float(ph * pw)).reshape(-1).to(torch.float32)
