"""Temporal feature reuse across frames of a mostly static scene.

Per grid position we cache, from the last time it was computed: its raw pixels, its final
features and its per-layer keys/values. On a new frame a kept position is REUSED when its pixels
are still similar to the cached pixels (compared with the pixels the cache was built from, so
slow drift cannot accumulate) and it is not among the task-relevant tokens; everything else is
RECOMPUTED through all layers while attending to the reused positions' cached keys/values.
Every `keyframe_interval` frames the cache is dropped and all kept tokens are recomputed; with
`staggered=True` there is no such keyframe after the first: on each frame the positions p with
p % interval == frame % interval are recomputed instead (each refreshed within `interval` frames,
per-frame cost flat).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


def patch_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row a.b / max(|a|^2, |b|^2) for non-negative pixel vectors: 1 only if identical; falls
    with a colour change (direction) AND a brightness change (magnitude), unlike plain cosine."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)   # float64: the device path decides identically
    dot = np.einsum('ij,ij->i', a, b)
    sq = np.maximum(np.einsum('ij,ij->i', a, a), np.einsum('ij,ij->i', b, b))
    eps = 1e-8
    return (dot + eps) / (sq + eps)


@dataclass
class ReusePlan:
    recompute: np.ndarray      # grid indices recomputed this frame (sorted)
    reuse: np.ndarray          # grid indices whose cached features/keys/values are reused (sorted)
    is_keyframe: bool

    @property
    def reuse_ratio(self) -> float:
        total = len(self.recompute) + len(self.reuse)
        return float(len(self.reuse) / total) if total else 0.0


class FeatureCache:
    def __init__(self, num_positions: int, num_layers: int, hidden_size: int, patch_dim: int,
                 device='cpu', dtype=torch.float32):
        self.n = num_positions
        self.pixels = np.zeros((num_positions, patch_dim), np.float32)
        self.valid = np.zeros(num_positions, bool)
        self.features = torch.zeros(num_positions, hidden_size, device=device, dtype=dtype)
        self.keys = torch.zeros(num_layers, num_positions, hidden_size, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)

    def invalidate(self) -> None:
        self.valid[:] = False

    def store(self, idx: np.ndarray, pixels: np.ndarray, features, keys, values) -> None:
        t = torch.as_tensor(idx, device=self.features.device, dtype=torch.long)
        self.features[t] = features
        self.keys[:, t] = keys
        self.values[:, t] = values
        self.pixels[idx] = pixels
        self.valid[idx] = True


class TemporalReuse:
    """Decides per frame which kept positions to recompute; owns the cache."""

    def __init__(self, similarity_threshold: float, keyframe_interval: int, task_relevant_ratio: float,
                 staggered: bool = False):
        self.threshold = similarity_threshold
        self.staggered = bool(staggered)
        self.keyframe_interval = keyframe_interval
        self.task_relevant_ratio = task_relevant_ratio
        self.cache: Optional[FeatureCache] = None
        self.frames_since_keyframe = 0

    def reset(self) -> None:
        self.cache = None
        self.frames_since_keyframe = 0

    def ensure_cache(self, *args, **kwargs) -> FeatureCache:
        if self.cache is None:
            self.cache = FeatureCache(*args, **kwargs)
        return self.cache

    def refresh_phase(self) -> int:
        """Staggered refresh: the residue class (mod keyframe_interval) of positions recomputed this frame."""
        return (self.frames_since_keyframe - 1) % max(self.keyframe_interval, 1)

    def plan(self, kept: np.ndarray, pixels: np.ndarray, relevance: Optional[np.ndarray]) -> ReusePlan:
        """`pixels`: [N, P] current raw patches; `relevance`: [N] task relevance (higher = keep fresh)."""
        cache = self.cache
        keyframe = (cache is None or not cache.valid.any()
                    or (not self.staggered and self.keyframe_interval > 0
                        and self.frames_since_keyframe >= self.keyframe_interval))
        if keyframe:
            self.frames_since_keyframe = 1
            if cache is not None:
                cache.invalidate()
            return ReusePlan(np.sort(kept), np.zeros(0, np.int64), True)
        self.frames_since_keyframe += 1
        static = cache.valid[kept] & (patch_similarity(pixels[kept], cache.pixels[kept]) >= self.threshold)
        if self.staggered and self.keyframe_interval > 0:
            static &= (kept % self.keyframe_interval) != self.refresh_phase()
        if relevance is not None and self.task_relevant_ratio > 0 and len(kept):
            n_rel = int(np.ceil(self.task_relevant_ratio * len(kept)))
            order = np.argsort(-np.asarray(relevance, np.float64)[kept], kind='stable')[:n_rel]
            static[order] = False
        return ReusePlan(np.sort(kept[~static]), np.sort(kept[static]), False)
