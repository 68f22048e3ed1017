"""Real-time plumbing for the control loop (no ROS): absolute-deadline sleeping, SCHED_FIFO and CPU
affinity when permitted, garbage collection only at safe points, and deadline statistics.

`DeadlineLoop` runs `tick(now_ns)` in its own thread at absolute release times
t_k = t_0 + k * period (CLOCK_MONOTONIC, `clock_nanosleep(TIMER_ABSTIME)` through ctypes, which
releases the GIL while asleep). Sleeping to an absolute time does not accumulate drift the way a
relative `sleep(period - work)` or an rclpy timer re-armed after a late callback does. A tick that
starts more than `late_tolerance` after its release is a missed deadline; when a tick overruns
whole periods they are skipped (never bursted) and counted as missed as well.
"""
from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np

# The OS facilities live in vla_ros.os_realtime (no torch import: the recorder uses them too);
# re-exported here, where callers first looked for them.
from vla_ros.os_realtime import (AbsoluteSleeper, apply_thread_realtime, lock_memory,  # noqa: F401
                                realtime_native_threads, set_affinity, thread_rusage)


@dataclass
class GcPolicy:
    """Automatic collection off; collect generation <= 1 every `young_period_s` and a full pass every
    `full_period_s`, each only right after a tick and only if `min_slack_s` remains to the next release."""
    young_period_s: float = 1.0
    full_period_s: float = 60.0
    min_slack_s: float = 0.004
    enabled: bool = True


class DeadlineLoop:
    """Runs `tick(now_ns)` at absolute deadlines in a dedicated thread; see the module docstring."""

    def __init__(self, tick: Callable[[int], None], rate_hz: float, *, fifo_priority: int = 0,
                 cpus: Sequence[int] = (), late_tolerance_s: float = 0.002, gc_policy: Optional[GcPolicy] = None,
                 history: int = 4096, name: str = 'control-loop', on_error: Optional[Callable[[str], None]] = None):
        if rate_hz <= 0:
            raise ValueError('rate_hz must be positive')
        self.tick = tick
        self.period_ns = int(round(1e9 / rate_hz))
        self.fifo_priority = int(fifo_priority)
        self.cpus = list(cpus)
        self.late_tolerance_ns = int(late_tolerance_s * 1e9)
        self.gc = gc_policy or GcPolicy()
        self.name = name
        self.on_error = on_error
        # Preallocated rings: wake time (ns), lateness (ns) and tick cost (ns) of the last `history` ticks.
        self._wake = np.zeros(history, dtype=np.int64)
        self._late = np.zeros(history, dtype=np.int64)
        self._cost = np.zeros(history, dtype=np.int64)
        self._n = 0
        self.ticks = 0
        self.missed_deadlines = 0      # started > late_tolerance after release, or skipped
        self.skipped_periods = 0       # releases dropped because a tick overran them
        self.tick_errors = 0
        self.last_error = ''
        self.gc_runs = 0
        self.gc_max_ms = 0.0
        self.run_gap_max_ms = 0.0      # longest period between tick starts, whole run
        self.run_gaps_over_5ms = 0     # periods more than 5 ms longer than nominal, whole run
        self.run_late_max_ms = 0.0     # longest wake-up after a release, whole run
        self.run_cost_max_ms = 0.0     # longest tick, whole run
        # What the thread went through in the tick (from the release before it) that ended the longest
        # period: context switches it asked for (blocked: a lock, I/O) and was forced into (preempted),
        # minor/major page faults. Tells a scheduler gap from a blocking call from paging.
        self.worst_period_rusage = (0, 0, 0, 0)
        self._prev_wake = 0
        self.rt_status = 'not started'
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sleeper = AbsoluteSleeper()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        if self.gc.enabled:
            gc.collect()
            gc.freeze()      # everything alive now (modules, weights) is never scanned again
            gc.disable()     # no collection can start inside a tick; see _safe_point
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        if self.gc.enabled:
            gc.enable()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        self.rt_status = apply_thread_realtime(self.fifo_priority, self.cpus)
        period, tol, size = self.period_ns, self.late_tolerance_ns, self._wake.size
        last_young = last_full = time.monotonic_ns()
        release = time.monotonic_ns() + period
        ru_prev = thread_rusage()
        while not self._stop.is_set():
            self._sleeper.sleep_until(release)
            woke = time.monotonic_ns()
            ru = thread_rusage()    # at each wake: the window between two wakes is exactly one period
            late = woke - release
            if late > tol:
                self.missed_deadlines += 1
            try:
                self.tick(woke)
            except Exception as exc:  # the loop must survive a bad tick; the node holds on the next one
                self.tick_errors += 1
                self.last_error = f'{type(exc).__name__}: {exc}'
                if self.on_error is not None:
                    self.on_error(self.last_error)
            done = time.monotonic_ns()
            if self._prev_wake:
                gap = woke - self._prev_wake
                if gap - period > 5_000_000:
                    self.run_gaps_over_5ms += 1
                if gap * 1e-6 > self.run_gap_max_ms:
                    self.run_gap_max_ms = gap * 1e-6
                    self.worst_period_rusage = (ru.ru_nvcsw - ru_prev.ru_nvcsw, ru.ru_nivcsw - ru_prev.ru_nivcsw,
                                                ru.ru_minflt - ru_prev.ru_minflt, ru.ru_majflt - ru_prev.ru_majflt)
            ru_prev = ru
            if late * 1e-6 > self.run_late_max_ms:
                self.run_late_max_ms = late * 1e-6
            if (done - woke) * 1e-6 > self.run_cost_max_ms:
                self.run_cost_max_ms = (done - woke) * 1e-6
            self._prev_wake = woke
            i = self._n % size
            self._wake[i], self._late[i], self._cost[i] = woke, late, done - woke
            self._n += 1
            self.ticks += 1
            release += period
            if done > release:  # overran whole periods: skip them, do not burst to catch up
                skipped = (done - release) // period + 1
                release += skipped * period
                self.skipped_periods += skipped
                self.missed_deadlines += skipped
            if self.gc.enabled:
                last_young, last_full = self._safe_point(done, release, last_young, last_full)

    def _safe_point(self, now: int, release: int, last_young: int, last_full: int):
        # Slack needed: gc_min_slack, but never more than half a period (else at 250 Hz it never ran).
        if release - now < min(self.gc.min_slack_s * 1e9, 0.5 * self.period_ns):
            return last_young, last_full
        generation = None
        if now - last_full >= self.gc.full_period_s * 1e9:
            generation, last_full = 2, now
        elif now - last_young >= self.gc.young_period_s * 1e9:
            generation = 1
        if generation is None:
            return last_young, last_full
        t0 = time.perf_counter()
        gc.collect(generation)
        self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - t0) * 1e3)
        self.gc_runs += 1
        return now, last_full

    # ------------------------------------------------------------------ statistics
    def stats(self) -> Dict[str, float]:
        """Rate, period jitter |period - nominal| and release lateness over the recent ticks."""
        n = min(self._n, self._wake.size)
        out = {'ticks': self.ticks, 'missed_deadlines': self.missed_deadlines,
               'skipped_periods': self.skipped_periods, 'tick_errors': self.tick_errors,
               'gc_runs': self.gc_runs, 'gc_max_ms': self.gc_max_ms, 'run_gap_max_ms': self.run_gap_max_ms,
               'run_gaps_over_5ms': self.run_gaps_over_5ms, 'run_late_max_ms': self.run_late_max_ms,
               'run_cost_max_ms': self.run_cost_max_ms}
        out.update(zip(('worst_voluntary_csw', 'worst_involuntary_csw', 'worst_minor_faults', 'worst_major_faults'),
                       self.worst_period_rusage))
        if n < 3:
            return out
        start = self._n - n
        order = (np.arange(start, start + n) % self._wake.size)
        wake, late, cost = self._wake[order], self._late[order], self._cost[order]
        periods = np.diff(wake) * 1e-6
        jitter = np.abs(periods - self.period_ns * 1e-6)
        out.update(rate_hz=float(1e3 / periods.mean()), jitter_p50_ms=float(np.percentile(jitter, 50)),
                   jitter_p99_ms=float(np.percentile(jitter, 99)), jitter_max_ms=float(jitter.max()),
                   gap_max_ms=float(periods.max()), late_p99_ms=float(np.percentile(late, 99) * 1e-6),
                   tick_cost_p99_ms=float(np.percentile(cost, 99) * 1e-6), tick_cost_max_ms=float(cost.max() * 1e-6))
        return out
