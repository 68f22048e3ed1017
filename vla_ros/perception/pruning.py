"""Visual token pruning: which grid positions go through the encoder layers.

Every strategy returns `(kept_indices, tokens)`: indices into the row-major patch grid, sorted
ascending and unique, and `tokens[kept_indices]`. Tokens already carry position embeddings (added
before pruning, see encoder.py) and the indices are published with the grid size, so layout
survives pruning.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

STRATEGIES = ('none', 'attention_topk', 'query', 'spatial_coverage')


def token_budget(num_tokens: int, keep_ratio: float, scores: Optional[np.ndarray] = None,
                 adaptive: bool = False, mass: float = 0.9, min_tokens: int = 1) -> int:
    """round(keep_ratio * N); with `adaptive`, shrink to the fewest tokens holding `mass` of the
    score distribution (concentrated attention needs fewer tokens), never below min_tokens."""
    cap = int(np.clip(round(keep_ratio * num_tokens), 1, num_tokens))
    if not adaptive or scores is None:
        return cap
    s = np.clip(np.asarray(scores, np.float64), 0.0, None)
    total = s.sum()
    if total <= 0:
        return cap
    cum = np.cumsum(np.sort(s)[::-1]) / total
    needed = int(np.searchsorted(cum, mass) + 1)
    return int(np.clip(needed, min(min_tokens, cap), cap))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    # Stable: ties go to the lower index, so equal scores give a deterministic choice.
    order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
    return np.sort(order[:k]).astype(np.int64)


def attention_topk(scores: np.ndarray, budget: int) -> np.ndarray:
    """FastV-style: keep the positions that receive the most attention."""
    return _top(scores, budget)


def query_select(relevance: np.ndarray, budget: int, fallback_scores: Optional[np.ndarray] = None) -> np.ndarray:
    """Instruction-driven: most relevant patches first; attention breaks ties among irrelevant ones."""
    rel = np.asarray(relevance, np.float64)
    if fallback_scores is not None:
        fb = np.asarray(fallback_scores, np.float64)
        rel = rel + 1e-3 * fb / (fb.max() + 1e-12)
    return _top(rel, budget)


def spatial_coverage(saliency: np.ndarray, budget: int, grid_hw: Tuple[int, int],
                     salient_fraction: float = 0.5) -> np.ndarray:
    """SP-VLA-style: the most salient tokens, then farthest-point sampling over grid positions so
    every region of the image keeps some tokens (the layout the action head needs survives)."""
    gh, gw = grid_hw
    n = gh * gw
    sal = np.asarray(saliency, np.float64)
    sal = sal / (np.abs(sal).max() + 1e-12)
    n_salient = int(np.clip(round(budget * salient_fraction), 0, budget))
    chosen = list(_top(sal, n_salient)) if n_salient else []
    dists = _grid_distances(gh, gw)
    dist = dists[chosen].min(axis=0) if chosen else np.full(n, 1e6)
    taken = np.zeros(n, bool)
    taken[chosen] = True
    tie_break = 1e-3 * sal
    while len(chosen) < budget:
        # Farthest from everything kept; saliency only breaks (near-)ties.
        pick = int(np.argmax(np.where(taken, -np.inf, dist + tie_break)))
        chosen.append(pick)
        taken[pick] = True
        np.minimum(dist, dists[pick], out=dist)
    return np.sort(np.asarray(chosen, np.int64))


@functools.lru_cache(maxsize=8)
def _grid_distances(gh: int, gw: int) -> np.ndarray:
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    out = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    out.setflags(write=False)
    return out


def select_tokens(tokens, strategy: str, budget: int, grid_hw: Tuple[int, int],
                  attention: Optional[np.ndarray] = None, relevance: Optional[np.ndarray] = None,
                  salient_fraction: float = 0.5):
    """Dispatch by strategy name -> (kept_indices int64 sorted unique, tokens[kept_indices])."""
    n = grid_hw[0] * grid_hw[1]
    if strategy == 'none':
        idx = np.arange(n, dtype=np.int64)
    elif strategy == 'attention_topk':
        if attention is None:
            raise ValueError('attention_topk needs attention scores')
        idx = attention_topk(attention, budget)
    elif strategy == 'query':
        if relevance is None and attention is None:
            raise ValueError('query selection needs instruction relevance or attention scores')
        idx = query_select(relevance if relevance is not None else attention, budget, attention)
    elif strategy == 'spatial_coverage':
        saliency = combined_saliency(attention, relevance, n)
        idx = spatial_coverage(saliency, budget, grid_hw, salient_fraction)
    else:
        raise ValueError(f'unknown pruning strategy {strategy!r}; one of {STRATEGIES}')
    return idx, tokens[idx]


def combined_saliency(attention: Optional[np.ndarray], relevance: Optional[np.ndarray], n: int) -> np.ndarray:
    """Attention and instruction relevance, each scaled to [0, 1], summed (relevance dominates ties)."""
    total = np.zeros(n, np.float64)
    for part in (attention, relevance):
        if part is not None:
            p = np.asarray(part, np.float64)
            span = p.max() - p.min()
            if span > 0:
                total += (p - p.min()) / span
    return total
