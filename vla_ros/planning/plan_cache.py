"""Plan cache: the slow planner only runs when the instruction or the scene actually changed.

A plan is reused while the instruction is identical and the scene embedding (mean of the perception
tokens) stays within a cosine-similarity threshold of the one the plan was made for. It is refreshed
on a change, after `timeout_s`, or when someone asks (replan request).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np

from vla_ros.planning.base import PlanOutput

MISS_REASONS = ('empty', 'instruction_changed', 'scene_changed', 'timeout', 'requested')


def scene_embedding(visual_tokens: np.ndarray) -> np.ndarray:
    """Pooled scene feature the cache compares (mean token; zeros when there are no tokens)."""
    tokens = np.asarray(visual_tokens, dtype=np.float32)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        return np.zeros(max(tokens.shape[-1] if tokens.ndim else 0, 1), np.float32)
    return tokens.mean(axis=0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return -1.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0  # two empty scenes are the same scene
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    miss_reasons: Dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in MISS_REASONS})
    last_similarity: float = float('nan')

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


@dataclasses.dataclass
class _Entry:
    instruction: str
    embedding: np.ndarray
    plan: PlanOutput
    stored_s: float


class PlanCache:
    @classmethod
    def from_config(cls, cfg) -> Optional['PlanCache']:
        """The cache a `PlannerConfig` asks for (`cache_similarity`, `cache_timeout_s`), None when
        `cache_enabled` is off."""
        return cls(cfg.cache_similarity, cfg.cache_timeout_s) if cfg.cache_enabled else None

    def __init__(self, similarity_threshold: float, timeout_s: float):
        self.similarity_threshold = float(similarity_threshold)
        self.timeout_s = float(timeout_s)
        self.stats = CacheStats()
        self._entry: Optional[_Entry] = None
        self._invalidated = False

    def miss_reason(self, instruction: str, scene_emb: np.ndarray, now_s: float) -> Optional[str]:
        """Why a lookup would miss, or None for a hit (no side effects)."""
        if self._invalidated:
            return 'requested'
        entry = self._entry
        if entry is None:
            return 'empty'
        if instruction != entry.instruction:
            return 'instruction_changed'
        if self.timeout_s > 0 and now_s - entry.stored_s > self.timeout_s:
            return 'timeout'
        if cosine_similarity(np.asarray(scene_emb, np.float32), entry.embedding) < self.similarity_threshold:
            return 'scene_changed'
        return None

    def lookup(self, instruction: str, scene_emb: np.ndarray, now_s: float) -> Optional[PlanOutput]:
        entry = self._entry
        if entry is not None:
            self.stats.last_similarity = cosine_similarity(np.asarray(scene_emb, np.float32), entry.embedding)
        reason = self.miss_reason(instruction, scene_emb, now_s)
        if reason is None:
            self.stats.hits += 1
            return entry.plan
        self.stats.misses += 1
        self.stats.miss_reasons[reason] += 1
        return None

    def store(self, instruction: str, scene_emb: np.ndarray, plan: PlanOutput, now_s: float) -> None:
        self._entry = _Entry(instruction, np.array(scene_emb, dtype=np.float32, copy=True), plan, float(now_s))
        self._invalidated = False

    def invalidate(self) -> None:
        """Replan request: the next lookup misses with reason 'requested'."""
        self._invalidated = True

    def clear(self) -> None:
        """Forget the cached plan (planner swapped: old tokens are meaningless to the new one)."""
        self._entry = None
        self._invalidated = False
