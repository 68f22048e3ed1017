"""Action chunking at control rate, with chunk-boundary smoothing.

The policy emits H-step chunks at a few Hz; the controller samples them at 100 Hz. Chunks are
kept on a time line (step k of a chunk applies at start_time + k * dt) and linearly
interpolated, so the command stream does not depend on the control rate.

Seam smoothing modes:
  'none'     the newest active chunk replaces everything (jumps at seams).
  'ensemble' ACT-style temporal ensembling: every active chunk covering `now` votes with weight
             exp(-decay * i), i = 0 for the oldest, so old commitments damp new jitter.
  'rtc'      real-time chunking: the steps that execute while the next chunk is being inferred
             are frozen and the new chunk is inpainted to continue them (see `rtc_prefix` and
             FlowMatchingActionHead.sample); the newest chunk then simply takes over.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

SMOOTHING_MODES = ('none', 'ensemble', 'rtc')


@dataclass
class Chunk:
    actions: np.ndarray        # [H, A] absolute joint targets
    start_time: float          # time at which step 0 applies (s)
    dt: float                  # seconds between steps
    active_from: float         # time from which the chunk may drive the output (inference done)
    chunk_id: int = 0

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def end_time(self) -> float:
        return self.start_time + (self.horizon - 1) * self.dt

    def covers(self, t: float) -> bool:
        return self.start_time <= t <= self.end_time

    def value_at(self, t: float) -> np.ndarray:
        """Linear interpolation between steps; clamps to the first/last step outside the chunk."""
        pos = (t - self.start_time) / self.dt
        if pos <= 0.0:
            return self.actions[0].copy()
        if pos >= self.horizon - 1:
            return self.actions[-1].copy()
        lo = int(math.floor(pos))
        frac = pos - lo
        return (1.0 - frac) * self.actions[lo] + frac * self.actions[lo + 1]


def rtc_soft_weights(horizon: int, frozen_steps: int, overlap_steps: int) -> np.ndarray:
    """Prefix weights for real-time chunking.

    1 for the frozen steps (they execute during inference, so the new chunk must equal them),
    then an exponential decay to 0 across the rest of the overlap with the old chunk (soft
    masking: the new chunk is encouraged, not forced, to agree), 0 where the old chunk has no
    data.
    """
    weights = np.zeros(horizon, dtype=np.float32)
    frozen = max(0, min(frozen_steps, horizon))
    overlap = max(frozen, min(overlap_steps, horizon))
    weights[:frozen] = 1.0
    span = overlap - frozen
    for i in range(frozen, overlap):
        c = (overlap - i) / (span + 1.0)
        weights[i] = c * (math.exp(c) - 1.0) / (math.e - 1.0)
    return weights


class ActionBuffer:
    """Thread-safe time line of committed chunks, sampled at control ticks."""

    def __init__(self, mode: str = 'rtc', ensemble_decay: float = 0.5, max_chunks: int = 16):
        if mode not in SMOOTHING_MODES:
            raise ValueError(f'smoothing mode must be one of {SMOOTHING_MODES}, got {mode!r}')
        self.mode = mode
        self.ensemble_decay = float(ensemble_decay)
        self.max_chunks = int(max_chunks)
        self._chunks: List[Chunk] = []
        self._lock = threading.Lock()
        self._next_id = 1

    # ------------------------------------------------------------------ commit
    def add(self, actions, start_time: float, dt: float, active_from: Optional[float] = None,
            chunk_id: Optional[int] = None) -> Chunk:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f'chunk must be [H, A], got {actions.shape}')
        if not np.all(np.isfinite(actions)):
            raise ValueError('chunk contains NaN/Inf')
        if dt <= 0:
            raise ValueError('chunk dt must be positive')
        with self._lock:
            cid = self._next_id if chunk_id is None else int(chunk_id)
            self._next_id = max(self._next_id, cid) + 1
            chunk = Chunk(actions, float(start_time), float(dt),
                          float(start_time if active_from is None else active_from), cid)
            self._chunks.append(chunk)
            self._chunks.sort(key=lambda c: c.active_from)
            del self._chunks[:-self.max_chunks]
            return chunk

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()

    def prune(self, now: float) -> None:
        """Forget chunks that ended before `now` and can no longer affect the output."""
        with self._lock:
            if not self._chunks:
                return
            newest = self._newest_active(now)
            self._chunks = [c for c in self._chunks if c.end_time >= now or c is newest or c.active_from > now]

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    @property
    def latest(self) -> Optional[Chunk]:
        with self._lock:
            return self._chunks[-1] if self._chunks else None

    # ------------------------------------------------------------------ sample
    def _newest_active(self, now: float) -> Optional[Chunk]:
        active = [c for c in self._chunks if c.active_from <= now]
        return active[-1] if active else None

    def _evaluate(self, t: float, chunks: List[Chunk]) -> Optional[np.ndarray]:
        if not chunks:
            return None
        newest = chunks[-1]
        if self.mode != 'ensemble':
            return newest.value_at(t)
        covering = [c for c in chunks if c.covers(t)]
        if not covering:
            return newest.value_at(t)
        weights = np.exp(-self.ensemble_decay * np.arange(len(covering)))
        values = np.stack([c.value_at(t) for c in covering])
        return (weights[:, None] * values).sum(0) / weights.sum()

    def target(self, now: float) -> Optional[np.ndarray]:
        """Joint target at time `now`, or None before any chunk is active."""
        with self._lock:
            return self._evaluate(now, [c for c in self._chunks if c.active_from <= now])

    def planned(self, t: float) -> Optional[np.ndarray]:
        """What will execute at (future) time t given every chunk committed so far."""
        with self._lock:
            return self._evaluate(t, list(self._chunks))

    # ------------------------------------------------------------------ real-time chunking
    def rtc_prefix(self, start_time: float, delay_s: float, horizon: int,
                   dt: float) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """Prefix [H, A] and soft weights [H] for inpainting the chunk that starts at start_time.

        Steps with start_time + k*dt < start_time + delay_s execute before the new chunk can take
        over, so they are frozen (weight 1), plus the step the take-over instant interpolates
        towards; the remaining overlap with committed chunks gets decaying weights. Returns (None, zeros) when nothing is committed.
        """
        with self._lock:
            chunks = list(self._chunks)
        if not chunks:
            return None, np.zeros(horizon, dtype=np.float32)
        times = start_time + dt * np.arange(horizon)
        with self._lock:
            prefix = np.stack([self._evaluate(float(t), chunks) for t in times])
        last_end = max(c.end_time for c in chunks)
        frozen = int(math.ceil(max(delay_s, 0.0) / dt - 1e-9)) + 1
        overlap = int(np.sum(times <= last_end + 1e-9))
        return prefix, rtc_soft_weights(horizon, frozen, overlap)
