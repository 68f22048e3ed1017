"""ControlLoop: glue between the action head, the chunk buffer and the safety filter (no ROS).

Inference runs in a background thread at chunk_rate_hz so a slow head never delays the
control tick; `tick(now)` only interpolates the buffer and runs the safety filter (tens of
microseconds), which is what keeps a 100 Hz command stream regular.
"""
from __future__ import annotations

import collections
import gc
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Optional, Tuple

import numpy as np
import torch

from vla_ros.action.chunking import ActionBuffer
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.action.safety import SafetyFilter, SafetyReport
from vla_ros.config.action import ActionConfig

# Python hands the GIL over every 5 ms by default; the control thread must not wait that long
# behind the inference thread's Python code, so shorten it (process-wide, harmless).
_GIL_SWITCH_INTERVAL_S = 0.0005
# Inference times behind the RTC delay estimate (its median)
_DELAY_WINDOW = 5
# Inference-thread CPU priority (ActionConfig.inference_priority). Lower priority lets the
# scheduler wake the control thread at once instead of at the next scheduler tick (4 ms here);
# the price is slower inference when the CPU is saturated (the RTC delay estimate adapts).
_PRIORITY_NICE = {'normal': 0, 'low': 10, 'idle': 19}


def set_thread_priority(level: str) -> str:
    """Apply 'normal' | 'low' (nice 10) | 'idle' (SCHED_IDLE) to the calling thread; returns what took."""
    if level == 'normal':
        return 'normal'
    tid = threading.get_native_id()
    if level == 'idle':
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return 'idle'
        except (AttributeError, OSError):
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, _PRIORITY_NICE.get(level, 10))
        return f'nice {_PRIORITY_NICE.get(level, 10)}'
    except (AttributeError, OSError):  # not Linux / not permitted: priorities stay equal
        return 'normal'


@dataclass
class ChunkResult:
    actions: np.ndarray          # [H, A] raw joint targets
    start_time: float
    dt: float
    active_from: float
    chunk_id: int
    plan_id: int
    frame_id: int
    inference_ms: float
    smoothing: str
    prefix_weights: Optional[np.ndarray] = None


@dataclass
class TickStatus:
    mode: str                    # waiting | hold | stale | decay | estop | running
    safety: SafetyReport = field(default_factory=SafetyReport)
    target: Optional[np.ndarray] = None   # pre-safety buffer target (None when holding)
    restarted: bool = False      # the arm was not where the commands left it: chunks dropped (ControlLoop.restart)


@dataclass
class _Input:
    value: object
    ident: int
    received: float


class RateMonitor:
    """Rolling statistics of tick periods (achieved rate and jitter = |period - nominal|)."""

    def __init__(self, nominal_hz: float, window: int = 2000):
        self.nominal = 1.0 / nominal_hz
        self._stamps: Deque[float] = collections.deque(maxlen=window + 1)
        self._lock = threading.Lock()

    def record(self, t: float) -> None:
        with self._lock:
            self._stamps.append(t)

    def stats(self) -> Dict[str, float]:
        with self._lock:
            stamps = np.asarray(self._stamps)
        if stamps.size < 3:
            return {'rate_hz': 0.0, 'period_p50_ms': 0.0, 'period_p99_ms': 0.0,
                    'jitter_p50_ms': 0.0, 'jitter_p99_ms': 0.0, 'jitter_max_ms': 0.0}
        periods = np.diff(stamps)
        jitter = np.abs(periods - self.nominal) * 1e3
        return {'rate_hz': float(1.0 / periods.mean()),
                'period_p50_ms': float(np.percentile(periods, 50) * 1e3),
                'period_p99_ms': float(np.percentile(periods, 99) * 1e3),
                'jitter_p50_ms': float(np.percentile(jitter, 50)),
                'jitter_p99_ms': float(np.percentile(jitter, 99)),
                'jitter_max_ms': float(jitter.max())}


def build_head(cfg: ActionConfig, vis_dim: int, plan_dim: int, logger=None) -> Tuple[FlowMatchingActionHead, bool]:
    """Load cfg.checkpoint_path, or build a random head (returns (head, loaded_from_checkpoint))."""
    if cfg.checkpoint_path:
        head = FlowMatchingActionHead.load(cfg.checkpoint_path, map_location=cfg.device)
        hc = head.config
        if hc.action_dim != cfg.action_dim or hc.horizon != cfg.horizon:
            raise ValueError(f'checkpoint horizon/action_dim {hc.horizon}/{hc.action_dim} do not match '
                             f'config {cfg.horizon}/{cfg.action_dim}')
        return head, True
    head = FlowMatchingActionHead(FlowHeadConfig(action_dim=cfg.action_dim, horizon=cfg.horizon, vis_dim=vis_dim,
                                                 plan_dim=plan_dim, proprio_dim=cfg.action_dim,
                                                 denoising_steps=cfg.denoising_steps))
    head.to(cfg.device).eval()
    return head, False


class ControlLoop:
    """Latest inputs in, safe joint commands out at control rate; chunks inferred in the background."""

    def __init__(self, head: FlowMatchingActionHead, cfg: ActionConfig, clock: Callable[[], float] = time.monotonic,
                 on_chunk: Optional[Callable[[ChunkResult], None]] = None, seed: Optional[int] = None):
        self.head = head.eval()
        self.cfg = cfg
        self._captured = None           # the denoising loop as one CUDA graph (cuda + cuda_graphs only)
        if cfg.cuda_graphs and head.action_mean.device.type == 'cuda':
            from vla_ros.action.flow_graph import CapturedSampler
            self._captured = CapturedSampler(head, steps=cfg.denoising_steps)
        self.clock = clock
        self.on_chunk = on_chunk
        self.control_dt = 1.0 / cfg.control_rate_hz
        self.buffer = ActionBuffer(cfg.smoothing, cfg.ensemble_decay)
        self.safety = SafetyFilter(cfg.safety, self.control_dt)
        self._lock = threading.Lock()
        self._plan: Optional[_Input] = None
        self._vis: Optional[_Input] = None
        self._proprio: Optional[_Input] = None
        self._generator = torch.Generator(device=cfg.device)
        if seed is not None:
            self._generator.manual_seed(seed)
        self._recent_inference_s: Deque[float] = collections.deque(maxlen=_DELAY_WINDOW)
        self._infer_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._was_stale = True
        self._restarted_at = -math.inf   # chunks need a frame captured at/after this (see restart)
        self.restarts = 0
        self.chunk_count = 0
        self.inference_errors = 0
        self.last_inference_ms = 0.0
        self.last_error = ''
        self.inference_priority = 'not started'

    # ------------------------------------------------------------------ inputs
    def update_plan(self, plan_tokens: np.ndarray, plan_id: int = 0, now: Optional[float] = None) -> None:
        self._set('_plan', np.asarray(plan_tokens, dtype=np.float32), plan_id, now)

    def update_perception(self, vis_tokens: np.ndarray, frame_id: int = 0, now: Optional[float] = None) -> None:
        self._set('_vis', np.asarray(vis_tokens, dtype=np.float32), frame_id, now)

    def update_proprio(self, positions: np.ndarray, now: Optional[float] = None) -> None:
        self._set('_proprio', np.asarray(positions, dtype=np.float64).reshape(-1), 0, now)

    def _set(self, name: str, value, ident: int, now: Optional[float]) -> None:
        with self._lock:
            setattr(self, name, _Input(value, int(ident), self.clock() if now is None else float(now)))

    def set_estop(self, active: bool) -> None:
        """Latch/release the e-stop. Either way the running chunks are dropped: after a release the
        next chunk is inferred from fresh inputs and motion restarts from the measured position."""
        with self._infer_lock:
            if active != self.safety.estop_active:
                self.buffer.clear()
            self.safety.set_estop(active)

    @property
    def estop_active(self) -> bool:
        return self.safety.estop_active

    def restart(self, now: Optional[float] = None) -> None:
        """The arm is not where the command stream left it (an episode reset teleported it, a push): drop
        the running chunks and accept new ones only from a camera frame captured at/after `now`. A chunk
        inferred from the old scene, or an RTC prefix continuing one, would drive the arm back toward where it
        was (measured in the no-ROS loop: consecutive episodes without this went 17/40, with it as with a
        fresh loop per episode, 25/40). The plan must come from such a frame too (a plan's time is the stamp of
        the frame it was made from): after an episode reset the previous plan names the previous episode's
        target, and the planner, asked by the action node's replan request, plans on the next frame."""
        self._restarted_at = self.clock() if now is None else float(now)
        self.restarts += 1
        self.buffer.clear()

    def _before_restart(self, frame_time: float) -> bool:
        return frame_time < self._restarted_at

    def ages(self, now: float) -> Tuple[Optional[float], Optional[float]]:
        with self._lock:
            plan, vis = self._plan, self._vis
        return (None if plan is None else now - plan.received, None if vis is None else now - vis.received)

    def proprio_age(self, now: float) -> Optional[float]:
        with self._lock:
            prop = self._proprio
        return None if prop is None else now - prop.received

    def inputs_ready(self, now: Optional[float] = None) -> bool:
        now = self.clock() if now is None else now
        with self._lock:
            ready = self._plan is not None and self._vis is not None and self._proprio is not None
        return ready and not self.safety.is_stale(*self.ages(now), self.proprio_age(now))

    @property
    def measured(self) -> Optional[np.ndarray]:
        with self._lock:
            return None if self._proprio is None else self._proprio.value

    # ------------------------------------------------------------------ inference
    def infer_chunk(self, now: Optional[float] = None, active_from: Optional[float] = None) -> Optional[ChunkResult]:
        """Infer and commit one chunk from the latest inputs.

        `now` is the request time (step 0 of the chunk); the chunk takes over at `active_from`
        (default: when inference finishes). Passing both lets benches/tests simulate latency.
        """
        with self._infer_lock:
            request = self.clock() if now is None else float(now)
            if not self.inputs_ready(request) or self.estop_active:
                return None
            with self._lock:
                plan, vis, prop = self._plan, self._vis, self._proprio
            if self._before_restart(min(vis.received, plan.received)):
                return None   # a frame of the scene before the arm restarted, or a plan made from one
            cfg = self.cfg
            prefix = weights = None
            if cfg.smoothing == 'rtc':
                delay = (active_from - request) if active_from is not None else self._delay_estimate_s
                prefix, weights = self.buffer.rtc_prefix(request, delay, cfg.horizon, cfg.action_dt)
            wall0 = time.perf_counter()
            if self._captured is not None:
                actions = self._captured.predict_actions(
                    vis.value[None], None, plan.value[None], prop.value[None].astype(np.float32),
                    prefix=None if prefix is None else prefix[None], prefix_weights=weights)
            else:
                actions = self.head.predict_actions(
                    vis.value[None], None, plan.value[None], prop.value[None].astype(np.float32),
                    steps=cfg.denoising_steps, prefix=None if prefix is None else prefix[None],
                    prefix_weights=weights, generator=self._generator)
            actions = actions[0].cpu().numpy().astype(np.float64)
            if cfg.inject_inference_delay_s > 0:    # eval knob: a slower head, seen by RTC's delay estimate too
                time.sleep(cfg.inject_inference_delay_s)
            inference_s = time.perf_counter() - wall0
            self._note_inference_time(inference_s)
            self.last_inference_ms = inference_s * 1e3
            ready = self.clock() if active_from is None else float(active_from)
            if not np.all(np.isfinite(actions)):
                self.inference_errors += 1
                self.last_error = 'non-finite actions from head'
                return None
            if self._before_restart(min(vis.received, plan.received)):
                return None   # the arm restarted while this chunk was inferred
            chunk = self.buffer.add(actions, request, cfg.action_dt, active_from=max(ready, request))
            self.buffer.prune(request)
            self.chunk_count += 1
            result = ChunkResult(actions, request, cfg.action_dt, chunk.active_from, chunk.chunk_id, plan.ident,
                                 vis.ident, self.last_inference_ms, cfg.smoothing, weights)
        if self.on_chunk is not None:
            self.on_chunk(result)
        return result

    def _note_inference_time(self, inference_s: float) -> None:
        self._recent_inference_s.append(float(inference_s))

    @property
    def _delay_estimate_s(self) -> float:
        """RTC's delay estimate: 1.5 x the median of the last few inference times (one chunk period, pessimistic,
        until measured). One slow inference (the first after start-up on a busy CPU took 2.2 s) must not set
        it: the old max-and-decay estimate then froze whole chunks (every step "executes before the new chunk
        arrives") for the next ~2 s, so the arm replayed stale chunks while the policy saw the cube move; a
        lasting slow-down still lifts the median within a few chunks."""
        if not self._recent_inference_s:
            return 1.0 / self.cfg.chunk_rate_hz
        return 1.5 * float(np.median(self._recent_inference_s))

    def warm_up(self, vis_tokens: int = 32, plan_tokens: int = 8) -> float:
        """One inference on zero inputs before serving, so torch's first-call set-up (allocator, kernels, the
        CUDA graph) is not paid by the first chunk of an episode. Commits nothing. Returns its seconds."""
        c = self.head.config
        vis = np.zeros((1, vis_tokens, c.vis_dim), np.float32)
        plan = np.zeros((1, plan_tokens, c.plan_dim), np.float32)
        prop = np.zeros((1, c.proprio_dim), np.float32)
        t0 = time.perf_counter()
        with self._infer_lock:
            if self._captured is not None:
                self._captured.predict_actions(vis, None, plan, prop)
            else:
                self.head.predict_actions(vis, None, plan, prop, steps=self.cfg.denoising_steps)
        return time.perf_counter() - t0

    def commit_chunk(self, actions: np.ndarray, start_time: float, dt: float, active_from: float, chunk_id: int,
                     plan_id: int = 0, frame_id: int = 0, inference_ms: float = 0.0,
                     prefix_weights: Optional[np.ndarray] = None) -> Optional[ChunkResult]:
        """Commit a chunk inferred elsewhere (the inference process); None if the loop is stopped/stale."""
        if self.estop_active or not self.inputs_ready() or self._before_restart(float(start_time)):
            return None
        with self._infer_lock:
            chunk = self.buffer.add(actions, start_time, dt, active_from=active_from, chunk_id=chunk_id)
            self.buffer.prune(min(start_time, self.clock()))
            self.chunk_count += 1
            self.last_inference_ms = float(inference_ms)
        return ChunkResult(chunk.actions, start_time, dt, chunk.active_from, chunk.chunk_id, int(plan_id),
                           int(frame_id), float(inference_ms), self.cfg.smoothing, prefix_weights)

    def start(self) -> None:
        """Start the background inference thread."""
        if self._thread is not None:
            return
        sys.setswitchinterval(min(sys.getswitchinterval(), _GIL_SWITCH_INTERVAL_S))
        self.warm_up()
        # A full GC pass over torch's object graph stalls every thread for tens of ms (measured
        # ~80 ms here); freezing what exists now (modules, weights) keeps later passes tiny.
        gc.collect()
        gc.freeze()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='action-inference', daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.inference_priority = set_thread_priority(self.cfg.inference_priority)
        period = 1.0 / self.cfg.chunk_rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.infer_chunk()
            except Exception as exc:  # keep the loop alive; the tick keeps holding safely
                self.inference_errors += 1
                self.last_error = f'{type(exc).__name__}: {exc}'
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    # ------------------------------------------------------------------ control tick
    def tick(self, now: Optional[float] = None) -> Tuple[Optional[np.ndarray], TickStatus]:
        """Command for this control tick (None when there is nothing safe to command yet)."""
        now = self.clock() if now is None else float(now)
        plan_age, vis_age = self.ages(now)
        proprio_age = self.proprio_age(now)
        stale = self.safety.is_stale(plan_age, vis_age, proprio_age)
        if stale and not self._was_stale:
            # Chunks computed from old inputs must not resume driving the arm later.
            self.buffer.clear()
        self._was_stale = stale
        target = None if stale else self.buffer.target(now)
        measured = self.measured
        hold_target = target if target is not None else self.safety.last_command
        if hold_target is None:
            hold_target = measured
        # Frozen positions must not steer an arm already under command (they still seed a first hold).
        if self.safety.last_command is not None and self.safety.is_stale(0.0, 0.0, proprio_age):
            measured = None
        # (an e-stop release re-anchors too, but set_estop already dropped the chunks: the first fresh one stays)
        under_command = self.safety.last_command is not None and not self.safety.release_pending
        command, report = self.safety.filter(hold_target, measured, plan_age, vis_age, now=now,
                                             joint_state_age_s=proprio_age)
        # The safety filter re-anchored an arm under command on where it is: restart the chunks too.
        restarted = under_command and report.reanchored and not report.estop
        if restarted:
            self.restart(now)
        if command is None:
            mode = 'waiting'
        elif report.estop:
            mode = 'estop'
        elif report.decaying:
            mode = 'decay'
        elif report.stale:
            mode = 'stale'
        elif target is None:
            mode = 'hold'
        else:
            mode = 'running'
        return command, TickStatus(mode, report, target, restarted)
