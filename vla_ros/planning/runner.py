"""Runs a planner in a background thread so a slow VLM never blocks the fast control loop.

`submit()` only swaps in the newest request (older pending ones are superseded, never queued), and
`latest()` always answers at once with the last finished plan. No ROS here; the node wraps it.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Deque, Optional, Tuple

import numpy as np

from vla_ros.planning.base import PlanOutput, Planner, PlanRequest
from vla_ros.planning.plan_cache import PlanCache, scene_embedding


@dataclasses.dataclass
class PlanMeta:
    seq: int                  # result counter (hits included)
    plan_id: int              # increments on freshly generated plans only
    cache_hit: bool
    cache_hit_rate: float
    latency_ms: float         # wall time to answer this request (cache lookup on a hit)
    planner_type: str
    instruction: str
    stamp_ns: int
    frame_id: int
    miss_reason: str = ''


ResultCallback = Callable[[PlanOutput, PlanMeta], None]


class AsyncPlanner:
    def __init__(self, planner: Planner, cache: Optional[PlanCache] = None,
                 on_result: Optional[ResultCallback] = None, clock: Callable[[], float] = time.monotonic,
                 on_error: Optional[Callable[[Exception], None]] = None, latency_window: int = 200):
        self._planner = planner
        self._generation = 0  # bumps on swap: results of a swapped-out planner are discarded
        self.cache = cache
        self._on_result = on_result
        self._on_error = on_error
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: Optional[PlanRequest] = None
        self._latest: Tuple[Optional[PlanOutput], Optional[PlanMeta]] = (None, None)
        self._stop = False
        self.busy = False
        self.submitted = self.superseded = self.results = self.plans = self.errors = self.discarded = 0
        self.last_error = ''
        self._latencies: Deque[float] = collections.deque(maxlen=latency_window)
        self._miss_latencies: Deque[float] = collections.deque(maxlen=latency_window)
        self._thread = threading.Thread(target=self._run, name='async-planner', daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ fast-loop side (never blocks long)
    def submit(self, req: PlanRequest) -> None:
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
            self._pending = req
            self.submitted += 1
            self._cond.notify_all()

    def latest(self) -> Tuple[Optional[PlanOutput], Optional[PlanMeta]]:
        with self._cond:
            return self._latest

    def request_replan(self) -> None:
        with self._cond:
            if self.cache is not None:
                self.cache.invalidate()

    def swap(self, planner: Planner) -> None:
        """Use `planner` from the next request on; the cached plan belongs to the old one, so drop it."""
        with self._cond:
            self._planner = planner
            self._generation += 1
            if self.cache is not None:
                self.cache.clear()

    @property
    def planner(self) -> Planner:
        return self._planner

    def wait_for_results(self, count: int, timeout: Optional[float] = None) -> bool:
        """Block until at least `count` results exist (tests/benches; never call from the fast loop)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.results >= count, timeout)

    def latency_percentile(self, q: float, misses_only: bool = False) -> float:
        with self._cond:
            values = list(self._miss_latencies if misses_only else self._latencies)
        return float(np.percentile(values, q)) if values else float('nan')

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._pending is not None)
                if self._stop:
                    return
                req, self._pending = self._pending, None
                planner, generation = self._planner, self._generation
                self.busy = True
            try:
                self._handle(req, planner, generation)
            except Exception as exc:  # a failing planner keeps the previous plan; never kills the thread
                with self._cond:
                    self.errors += 1
                    self.last_error = f'{type(exc).__name__}: {exc}'
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                with self._cond:
                    self.busy = False
                    self._cond.notify_all()

    def _handle(self, req: PlanRequest, planner: Planner, generation: int) -> None:
        start = time.perf_counter()
        emb = scene_embedding(req.visual_tokens)
        now = self._clock()
        cached, miss_reason = None, ''
        if self.cache is not None:
            with self._cond:
                miss_reason = self.cache.miss_reason(req.instruction, emb, now) or ''
                cached = self.cache.lookup(req.instruction, emb, now)
        if cached is not None:
            out = dataclasses.replace(cached, latency_ms=(time.perf_counter() - start) * 1e3)
        else:
            out = planner.plan(req)
            out = dataclasses.replace(out, latency_ms=(time.perf_counter() - start) * 1e3)
        with self._cond:
            if generation != self._generation:
                self.discarded += 1
                return
            if cached is None:
                self.plans += 1
                if self.cache is not None:
                    self.cache.store(req.instruction, emb, out, now)
                self._miss_latencies.append(out.latency_ms)
            self._latencies.append(out.latency_ms)
            self.results += 1
            meta = PlanMeta(seq=self.results, plan_id=self.plans, cache_hit=cached is not None,
                            cache_hit_rate=self.cache.stats.hit_rate if self.cache is not None else 0.0,
                            latency_ms=out.latency_ms, planner_type=planner.type_name,
                            instruction=req.instruction, stamp_ns=req.stamp_ns, frame_id=req.frame_id,
                            miss_reason=miss_reason)
            self._latest = (out, meta)
        if self._on_result is not None:
            self._on_result(out, meta)
        with self._cond:
            self._cond.notify_all()
