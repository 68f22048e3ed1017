"""The fast system's real-time part (no ROS): a `DeadlineLoop` thread ticking a `ControlLoop`, the
inference process feeding it chunks, and the two ways commands leave for the arm.

    inputs (node callbacks) -> RealtimeController.update_*  -> ControlLoop (staleness, safety)
                                                            -> InferenceProcess (shared memory)
    DeadlineLoop thread, every 1/control_rate_hz at an absolute release time:
        poll the chunk slot -> commit -> ControlLoop.tick (safety filter) -> sink.stamped (+ sink.forward)
        command_interface == 'trajectory': a new chunk -> safe JointTrajectory -> sink.trajectory;
        e-stop / stale -> a stop trajectory, once

The node implements the sink (message conversion and publishing only). Everything here keeps
to CLOCK_MONOTONIC; the sink's ROS clock is sampled once per tick to stamp messages.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, Optional, Protocol

import numpy as np

from vla_ros.action.controller import ChunkResult, ControlLoop
from vla_ros.action.inference_proc import ChunkInbox, InferenceChannels
from vla_ros.action.shm import SeqSlot
from vla_ros.action.rt import DeadlineLoop, GcPolicy
from vla_ros.action.safety import SafetyReport
from vla_ros.action.trajectory import TrajectoryFollower, chunk_trajectory
from vla_ros.config.action import ActionConfig

MODES = ('waiting', 'hold', 'stale', 'decay', 'estop', 'running')
STAT_KEYS = ('ticks', 'missed_deadlines', 'skipped_periods', 'tick_errors', 'gc_runs', 'gc_max_ms', 'rate_hz',
             'jitter_p50_ms', 'jitter_p99_ms', 'jitter_max_ms', 'gap_max_ms', 'late_p99_ms', 'tick_cost_p99_ms',
             'tick_cost_max_ms', 'publish_max_ms', 'run_gap_max_ms', 'run_gaps_over_5ms', 'run_late_max_ms',
             'run_cost_max_ms', 'worst_voluntary_csw', 'worst_involuntary_csw', 'worst_minor_faults',
             'worst_major_faults', 'inputs_max_ms', 'safety_max_ms', 'trajectory_max_ms', 'chunk_publish_max_ms',
             'commands_published', 'trajectories_sent', 'stop_trajectories_sent', 'chunks', 'restarts',
             'mode', 'realtime_granted', 'heartbeat')
# The safety filter's counters (ticks on which it held, limited, re-anchored, ...), as the node reports them.
SAFETY_KEYS = tuple(f'safety_{f.name}' for f in dataclasses.fields(SafetyReport)) + ('safety_ticks',)
STAT_KEYS = STAT_KEYS + SAFETY_KEYS
# Whole-run maxima of the tick's phases [ms]: shared-memory inputs + chunk commit, ControlLoop.tick
# (staleness, safety filter), trajectory building + publishing, ActionChunk message publishing.
PHASES = ('inputs', 'safety', 'trajectory', 'chunk_publish')
_STOPPING_MODES = ('estop', 'stale', 'decay')
_STALE_MODES = ('stale', 'decay')   # ControlLoop.tick drops its chunks on entering these


class CommandSink(Protocol):
    def ros_now_ns(self) -> int: ...
    def stamped(self, command: np.ndarray, stamp_ns: int) -> None: ...
    def forward(self, command: np.ndarray) -> None: ...
    def trajectory(self, start_ns: int, times: np.ndarray, positions: np.ndarray, velocities: np.ndarray) -> None: ...
    def chunk(self, result: ChunkResult, stamp_ns: int) -> None: ...
    def replan(self) -> None: ...          # ask the planner for a plan of the next frame (after a restart)


class InputMirror:
    """Control-process side of the input slots the node writes: receive times of plan and perception
    (all the tick needs for staleness; the tokens stay with the inference process), joint positions
    and the e-stop latch, copied into the ControlLoop when they change."""

    def __init__(self, channels: InferenceChannels):
        self.channels = channels
        self._meta = {'plan': {'meta': np.zeros(3)}, 'vis': {'meta': np.zeros(3)}}
        self._proprio = channels.proprio.buffers()
        self._estop = channels.estop.buffers()
        self._seen = {'plan': 0, 'vis': 0, 'proprio': 0, 'estop': 0}
        self._token = np.zeros((1, 1), dtype=np.float32)   # placeholder: the tick never reads tokens

    def _fresh(self, name: str, slot: SeqSlot, out) -> bool:
        got = slot.read_new(out, self._seen[name])
        if got is None:
            return False
        self._seen[name] = got
        return True

    def poll(self, loop: ControlLoop) -> None:
        ch = self.channels
        for name, slot in (('plan', ch.plan), ('vis', ch.vis)):
            if self._fresh(name, slot, self._meta[name]):
                _, ident, received = self._meta[name]['meta']
                setter = loop.update_plan if name == 'plan' else loop.update_perception
                setter(self._token, int(ident), now=float(received))
        if self._fresh('proprio', ch.proprio, self._proprio):
            loop.update_proprio(self._proprio['q'].copy(), now=float(self._proprio['meta'][0]))
        if self._fresh('estop', ch.estop, self._estop):
            loop.set_estop(bool(self._estop['v'][0]))


class RealtimeController:
    def __init__(self, loop: ControlLoop, cfg: ActionConfig, sink: CommandSink,
                 backend: Optional[ChunkInbox] = None, log: Callable[[str], None] = print,
                 inputs: Optional[InputMirror] = None, stats_slot: Optional[SeqSlot] = None):
        """backend: where chunks come from (None: the ControlLoop's own inference thread); inputs: read
        inputs from shared memory every tick (control process) instead of update_* calls; stats_slot:
        publish stats() there every ~0.5 s for the node's diagnostics."""
        self.loop, self.cfg, self.sink, self.backend, self.log = loop, cfg, sink, backend, log
        self.inputs, self.stats_slot = inputs, stats_slot
        self._stats_period_ns = 500_000_000
        self._next_stats_ns = 0
        rt = cfg.realtime
        self.deadline = DeadlineLoop(
            self._tick, cfg.control_rate_hz, fifo_priority=rt.fifo_priority, cpus=rt.control_cpus,
            late_tolerance_s=rt.late_tolerance_ms * 1e-3,
            gc_policy=GcPolicy(rt.gc_young_period_s, rt.gc_full_period_s, rt.gc_min_slack_ms * 1e-3, rt.manage_gc),
            name='action-control', on_error=None)
        self._chunk_buf = backend.channels.chunk.buffers() if backend is not None else None
        self._trajectory = cfg.command_interface == 'trajectory'
        self.follower = TrajectoryFollower(cfg.action_dim)
        self._sent_chunk_id = -1
        self._moving = False
        self._logged_rt = False
        self.mode = 'waiting'
        self.published = 0
        self.publish_max_ms = 0.0      # longest stamped+forward publish (DDS write) of the run
        self.phase_max_ms = dict.fromkeys(PHASES, 0.0)
        self.trajectories_sent = 0
        self.stop_trajectories_sent = 0

    # ------------------------------------------------------------------ inputs (callback threads)
    def update_plan(self, tokens: np.ndarray, ident: int) -> None:
        self.loop.update_plan(tokens, ident, now=time.monotonic())

    def update_perception(self, tokens: np.ndarray, ident: int) -> None:
        self.loop.update_perception(tokens, ident, now=time.monotonic())

    def update_proprio(self, q: np.ndarray) -> None:
        self.loop.update_proprio(q, now=time.monotonic())

    def set_estop(self, active: bool) -> None:
        self.loop.set_estop(active)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the tick thread (and the ControlLoop's inference thread when there is no backend)."""
        if self.backend is None:
            self.loop.start()
        self.deadline.start()

    def close(self) -> None:
        self.deadline.stop()
        self.loop.close()

    def run_forever(self, should_stop: Callable[[], bool], poll_s: float = 0.2) -> None:
        """Control process: tick in the deadline thread until should_stop()."""
        self.start()
        try:
            while not should_stop() and self.deadline.running:
                time.sleep(poll_s)
        finally:
            self.close()

    # ------------------------------------------------------------------ the tick (control thread)
    def _tick(self, now_ns: int) -> None:
        if not self._logged_rt:
            self._logged_rt = True
            self.log(f'control loop {self.cfg.control_rate_hz:g} Hz ({self.cfg.command_interface} interface, '
                     f'inference in a {self.cfg.inference_mode}): {self.deadline.rt_status}')
        now = now_ns * 1e-9
        loop = self.loop
        if self.inputs is not None:
            self.inputs.poll(loop)
        new_chunk = None
        if self.backend is not None and self.backend.poll_chunk(self._chunk_buf):
            buf = self._chunk_buf
            m = buf['meta']
            new_chunk = loop.commit_chunk(buf['actions'].copy(), m[0], m[1], m[2], int(m[3]), int(m[4]), int(m[5]),
                                          m[6], buf['weights'].copy() if m[7] else None)
        t1 = time.monotonic_ns()
        self._phase('inputs', t1 - now_ns)
        command, status = loop.tick(now)
        if status.restarted:           # chunks now wait for a plan of a frame after `now`: ask for one
            self.sink.replan()
        offset_ns = self.sink.ros_now_ns() - time.monotonic_ns()
        self._phase('safety', time.monotonic_ns() - t1)
        if self.backend is not None:
            if status.restarted:       # the arm restarted where it is: the child waits for a newer frame too
                self.backend.clear(restart_at=now)
            elif status.mode in _STALE_MODES and self.mode not in _STALE_MODES:
                self.backend.clear()   # the child's chunk mirror must not seed RTC with pre-stop chunks
        if command is not None:
            t_pub = time.monotonic_ns()
            self.sink.stamped(command, now_ns + offset_ns)
            if not self._trajectory:
                self.sink.forward(command)
            self.publish_max_ms = max(self.publish_max_ms, (time.monotonic_ns() - t_pub) * 1e-6)
            self.published += 1
        if self._trajectory:
            t2 = time.monotonic_ns()
            self._trajectory_step(now, offset_ns, status.mode)
            self._phase('trajectory', time.monotonic_ns() - t2)
        if new_chunk is not None:
            t3 = time.monotonic_ns()
            self.sink.chunk(new_chunk, int(new_chunk.start_time * 1e9) + offset_ns)
            self._phase('chunk_publish', time.monotonic_ns() - t3)
        self.mode = status.mode
        if self.stats_slot is not None and now_ns >= self._next_stats_ns:
            self._next_stats_ns = now_ns + self._stats_period_ns
            self.export_stats()

    def _phase(self, name: str, ns: int) -> None:
        if ns * 1e-6 > self.phase_max_ms[name]:
            self.phase_max_ms[name] = ns * 1e-6

    def export_stats(self) -> None:
        s = self.stats()
        values = [float(s.get(k, 0.0)) if k not in ('mode', 'realtime_granted', 'heartbeat') else 0.0
                  for k in STAT_KEYS]
        values[STAT_KEYS.index('mode')] = MODES.index(self.mode) if self.mode in MODES else -1
        values[STAT_KEYS.index('realtime_granted')] = float('SCHED_FIFO priority' in self.deadline.rt_status)
        values[STAT_KEYS.index('heartbeat')] = time.monotonic()
        self.stats_slot.write(v=values)

    def _trajectory_step(self, now: float, offset_ns: int, mode: str) -> None:
        if mode == 'running':
            latest = self.loop.buffer.latest
            if latest is not None and latest.chunk_id != self._sent_chunk_id and latest.active_from <= now:
                self._send_chunk(now, offset_ns, latest)
        elif mode in _STOPPING_MODES and self._moving:
            self._send_stop(now, offset_ns)

    def _state_at(self, t: float):
        state = self.follower.sample(t)
        if state is not None:
            return state
        measured = self.loop.measured
        if measured is None:
            return None
        return measured.copy(), np.zeros_like(measured)

    def _send_chunk(self, now: float, offset_ns: int, chunk) -> None:
        start = now + self.cfg.trajectory_lead_s
        state = self._state_at(start)
        if state is None:
            return
        traj = chunk_trajectory(self.loop.buffer.planned, start, chunk.end_time, state[0], state[1],
                                self.cfg.trajectory_point_dt, self.cfg.safety)
        self._sent_chunk_id = chunk.chunk_id
        if traj is None:
            return
        rel, pos, vel = traj
        self.follower.set_trajectory(now, start, rel, pos, vel)
        self.sink.trajectory(int(start * 1e9) + offset_ns, rel, pos, vel)
        self._moving = True
        self.trajectories_sent += 1

    def _send_stop(self, now: float, offset_ns: int) -> None:
        """Constant deceleration from the desired state now to rest, within max_acceleration and limits."""
        state = self._state_at(now)
        self._moving = False
        if state is None:
            return
        p0, v0 = state
        safety = self.cfg.safety
        duration = max(self.cfg.trajectory_stop_s, float(np.abs(v0).max()) / max(safety.max_acceleration, 1e-9))
        stop = np.clip(p0 + 0.5 * v0 * duration, safety.joint_lower, safety.joint_upper)
        rel, pos, vel = np.array([duration]), stop[None], np.zeros((1, p0.size))
        self.follower.set_trajectory(now, now, rel, pos, vel)
        self.sink.trajectory(int(now * 1e9) + offset_ns, rel, pos, vel)
        self.stop_trajectories_sent += 1

    # ------------------------------------------------------------------ diagnostics
    def stats(self) -> Dict[str, object]:
        out: Dict[str, object] = dict(self.deadline.stats())
        out.update({f'{name}_max_ms': v for name, v in self.phase_max_ms.items()})
        out.update(mode=self.mode, commands_published=self.published, publish_max_ms=self.publish_max_ms,
                   realtime=self.deadline.rt_status,
                   command_interface=self.cfg.command_interface, inference_mode=self.cfg.inference_mode)
        if self.deadline.last_error:
            out['last_tick_error'] = self.deadline.last_error
        out.update(chunks=self.loop.chunk_count, restarts=self.loop.restarts)
        out.update({f'safety_{k}': v for k, v in self.loop.safety.counters.items()})
        if self._trajectory:
            out.update(trajectories_sent=self.trajectories_sent, stop_trajectories_sent=self.stop_trajectories_sent)
        if self.backend is not None:
            out.update(self.backend.status())
        return out


def stats_from_slot(slot: SeqSlot, out: Dict[str, np.ndarray]) -> Dict[str, object]:
    """The control process's stats() as the node reads them back (numbers; mode as its name)."""
    if slot.read_into(out) is None or slot.version == 0:
        return {}
    v = out['v']
    stats: Dict[str, object] = {k: float(v[i]) for i, k in enumerate(STAT_KEYS)}
    for k in ('ticks', 'missed_deadlines', 'skipped_periods', 'tick_errors', 'gc_runs', 'commands_published',
              'run_gaps_over_5ms', 'worst_voluntary_csw', 'worst_involuntary_csw', 'worst_minor_faults',
              'worst_major_faults', 'trajectories_sent', 'stop_trajectories_sent', 'chunks', 'restarts') + SAFETY_KEYS:
        stats[k] = int(stats[k])
    mode = int(stats.pop('mode'))
    stats['mode'] = MODES[mode] if 0 <= mode < len(MODES) else 'unknown'
    stats['realtime_granted'] = bool(stats['realtime_granted'])
    stats['control_heartbeat_age_s'] = time.monotonic() - float(stats.pop('heartbeat'))
    return stats
