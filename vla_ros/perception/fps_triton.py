"""Farthest-point fill of spatial-coverage pruning as ONE Triton kernel (one program, loop inside).

The fill is sequential (each pick depends on the last), so as torch ops it is ~4 launches per pick:
~180 picks for a 729-patch grid at keep 0.5 would be ~700 launches, several ms even inside a CUDA
graph. One program holding the whole grid in registers does it in one launch. Same float64 rule
as the numpy path: pick = first argmax of (taken ? -inf : dist + tie), dist = min(dist, sqrt(|grid(pick) - grid|^2)).
Optional: without Triton (CPU-only installs) torch_ops falls back to the torch loop.
"""
from __future__ import annotations

import logging
import os

import torch

LOG = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the install
    import triton
    import triton.language as tl
    _HAVE_TRITON = True
except Exception:  # ImportError, or a Triton that cannot find a backend
    _HAVE_TRITON = False


_DISABLED = []


def triton_fps_available() -> bool:
    return _HAVE_TRITON and not _DISABLED and os.environ.get('VLA_ROS_NO_TRITON', '') != '1'


def disable_triton(reason) -> None:
    """Stop using the kernel for this process (it failed to build or run); logged once."""
    if not _DISABLED:
        LOG.warning('Triton farthest-point kernel unavailable, using the torch loop: %s', reason)
    _DISABLED.append(str(reason))


if _HAVE_TRITON:
    # One program loops over the picks; fewer warps = cheaper per-pick argmax. Timed once per grid size.
    # The distance row of a pick is not loaded from an N x N table: the squared grid distance is
    # integer arithmetic in registers and its square root comes from a small table of sqrt(0..max)
    # computed on the host (correctly rounded, as numpy's norm of integer offsets is).
    @triton.autotune(configs=[triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)], key=['n'])
    @triton.jit
    def _fps_fill_kernel(dist_ptr, taken_ptr, tie_ptr, sqrt_ptr, out_ptr, n, grid_w, n_pick,
                         BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        inside = offs < n
        dist = tl.load(dist_ptr + offs, mask=inside, other=0.0)
        taken = tl.load(taken_ptr + offs, mask=inside, other=1) != 0
        taken = taken | (offs >= n)
        tie = tl.load(tie_ptr + offs, mask=inside, other=0.0)
        row_i = offs // grid_w
        col_i = offs % grid_w
        for i in range(n_pick):
            score = tl.where(taken, float('-inf'), dist + tie)
            pick = tl.argmax(score, axis=0, tie_break_left=True)
            tl.store(out_ptr + i, pick.to(tl.int64))
            taken = taken | (offs == pick)
            dr = row_i - pick // grid_w
            dc = col_i - pick % grid_w
            row = tl.load(sqrt_ptr + dr * dr + dc * dc, mask=inside, other=0.0)
            dist = tl.minimum(dist, row)


_SQRT = {}


def _sqrt_table(max_sq: int, device) -> torch.Tensor:
    key = (max_sq, str(device))
    if key not in _SQRT:
        _SQRT[key] = torch.arange(max_sq + 1, dtype=torch.float64).sqrt().to(device)
    return _SQRT[key]


def farthest_point_fill(dist: torch.Tensor, taken: torch.Tensor, tie: torch.Tensor, n_pick: int,
                        grid_w: int) -> torch.Tensor:
    """[n_pick] int64 picks, in order. dist [N] f64 (distance to the chosen set), taken [N] bool,
    tie [N] f64; positions are row-major over a grid `grid_w` wide (Euclidean grid distances)."""
    if not _HAVE_TRITON:
        raise RuntimeError('Triton is not installed')
    n = dist.shape[0]
    grid_h = -(-n // grid_w)
    sqrt = _sqrt_table((grid_h - 1) ** 2 + (grid_w - 1) ** 2, dist.device)
    out = torch.empty(n_pick, dtype=torch.int64, device=dist.device)
    block = max(triton.next_power_of_2(n), 16)
    _fps_fill_kernel[(1,)](dist.contiguous(), taken.to(torch.int8).contiguous(), tie.contiguous(), sqrt, out, n,
                           int(grid_w), n_pick, BLOCK=block)
    return out
