"""Whole chunks as joint trajectories for a joint_trajectory_controller (JTC), and a JTC-like
follower that executes them (no ROS).

`TrajectoryFollower` follows ros2_controllers' JTC semantics, so the simulated arm behaves like a
real one behind a JTC and the action side can predict exactly what the arm is executing:
  * a trajectory starts at its header stamp (0 = on receipt); until then the active one continues;
  * of a new trajectory only waypoints still in the future on receipt are kept (none -> rejected),
    and only those not before its own start time;
  * at the start time the old trajectory is cut and the new one spliced on from the old one's
    desired state (position and velocity) at that instant;
  * positions + velocities -> cubic Hermite spline between waypoints; positions only -> linear;
  * after the last waypoint its position is held.

`chunk_trajectory` turns the buffer's planned targets into such a trajectory that already obeys
the safety limits: a private `SafetyFilter` (same SafetyConfig, one step per waypoint), seeded with
the desired state at the splice instant, limits position, velocity and acceleration waypoint by
waypoint; velocities are central differences and the last one is zero, so an arm whose action
node dies stops at the end of the last chunk.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np

from vla_ros.action.safety import SafetyFilter
from vla_ros.config.action import SafetyConfig


class _Spline:
    """Knots (absolute times [K], positions [K, A], velocities [K, A] or None for linear)."""

    def __init__(self, times: np.ndarray, pos: np.ndarray, vel: Optional[np.ndarray]):
        self.times, self.pos, self.vel = times, pos, vel

    def sample(self, t: float) -> Tuple[np.ndarray, np.ndarray]:
        times = self.times
        if t < times[0] or times.size == 1:
            return self.pos[0].copy(), np.zeros_like(self.pos[0])
        if t >= times[-1]:
            return self.pos[-1].copy(), np.zeros_like(self.pos[-1])
        i = int(np.searchsorted(times, t, side='right')) - 1
        t0, t1 = times[i], times[i + 1]
        h = t1 - t0
        s = (t - t0) / h
        p0, p1 = self.pos[i], self.pos[i + 1]
        if self.vel is None:
            return p0 + s * (p1 - p0), (p1 - p0) / h
        v0, v1 = self.vel[i], self.vel[i + 1]
        s2, s3 = s * s, s * s * s
        pos = ((2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * h * v0 + (-2 * s3 + 3 * s2) * p1
               + (s3 - s2) * h * v1)
        vel = ((6 * s2 - 6 * s) * p0 + (3 * s2 - 4 * s + 1) * h * v0 + (-6 * s2 + 6 * s) * p1
               + (3 * s2 - 2 * s) * h * v1) / h
        return pos, vel


class TrajectoryFollower:
    """What a joint_trajectory_controller commands at time t (seconds on one clock)."""

    def __init__(self, num_joints: int):
        self.num_joints = int(num_joints)
        self._active: Optional[_Spline] = None
        self._pending: List[Tuple[float, np.ndarray, np.ndarray, Optional[np.ndarray]]] = []
        self.accepted = 0
        self.rejected = 0

    @property
    def active(self) -> bool:
        return self._active is not None or bool(self._pending)

    def hold(self, q, t: float) -> None:
        """Hold position q from time t on (what a JTC does when activated or after e.g. a cancel)."""
        q = np.asarray(q, dtype=np.float64).reshape(self.num_joints)
        self._pending.clear()
        self._active = _Spline(np.array([t]), q[None].copy(), np.zeros((1, self.num_joints)))

    def cancel(self) -> None:
        """Forget everything (another command interface took over)."""
        self._pending.clear()
        self._active = None

    def set_trajectory(self, received: float, start: float, times_from_start, positions,
                       velocities=None) -> bool:
        """Queue a trajectory received at `received` that starts at `start` (<= 0: on receipt).
        Returns False (and counts) when no waypoint lies in the future."""
        rel = np.asarray(times_from_start, dtype=np.float64).reshape(-1)
        pos = np.asarray(positions, dtype=np.float64).reshape(rel.size, self.num_joints)
        vel = None if velocities is None else np.asarray(velocities, dtype=np.float64).reshape(pos.shape)
        if rel.size == 0 or np.any(np.diff(rel) <= 0) or not np.all(np.isfinite(pos)) \
                or (vel is not None and not np.all(np.isfinite(vel))):
            self.rejected += 1
            return False
        start = received if start <= 0.0 else float(start)
        times = start + rel
        keep = times >= received
        if not np.any(keep):
            self.rejected += 1
            return False
        # A newer trajectory supersedes any queued one that has not started yet.
        self._pending = [p for p in self._pending if p[0] < start]
        self._pending.append((start, times[keep], pos[keep], None if vel is None else vel[keep]))
        self.accepted += 1
        return True

    def _activate(self, t: float) -> None:
        while self._pending and self._pending[0][0] <= t:
            start, times, pos, vel = self._pending.pop(0)
            if self._active is None:
                p0, v0 = pos[0].copy(), np.zeros(self.num_joints)
            else:
                p0, v0 = self._active.sample(start)
            after = times >= start      # waypoints before the trajectory's own start never execute
            times, pos = times[after], pos[after]
            vel = None if vel is None else vel[after]
            if times.size and times[0] == start:  # due at the splice instant: replaces the splice knot
                knots_t, knots_p, knots_v = times, pos, vel
            else:
                knots_t = np.concatenate([[start], times])
                knots_p = np.concatenate([p0[None], pos])
                knots_v = None if vel is None else np.concatenate([v0[None], vel])
            self._active = _Spline(knots_t, knots_p, knots_v)

    def sample(self, t: float) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(desired position, desired velocity) at t, or None before any trajectory/hold."""
        self._activate(t)
        if self._active is None:
            return None
        return self._active.sample(t)


def chunk_trajectory(planned: Callable[[float], Optional[np.ndarray]], start: float, end: float,
                     p0: np.ndarray, v0: np.ndarray, point_dt: float,
                     safety: SafetyConfig) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Waypoints (times from `start`, positions, velocities) sampled from `planned(t)` every
    `point_dt` on (start, end], made safe by a SafetyFilter seeded with the state (p0, v0) at
    `start`. None when there is no waypoint or the buffer has no target."""
    n = int(np.floor((end - start) / point_dt + 1e-9))
    if n < 1:
        return None
    shadow = SafetyFilter(safety, point_dt)
    first, _ = shadow.filter(p0, p0, 0.0, 0.0)    # seeds the filter's reference at p0 (clamped into limits)
    if first is None:
        return None
    shadow.last_velocity = np.clip(np.asarray(v0, dtype=np.float64), -safety.max_velocity, safety.max_velocity)
    rel = point_dt * np.arange(1, n + 1)
    pos = np.empty((n, first.size))
    for k in range(n):
        target = planned(start + rel[k])
        if target is None:
            return None
        pos[k], _ = shadow.filter(target, None, 0.0, 0.0)
    prev = np.concatenate([first[None], pos[:-1]])
    nxt = np.concatenate([pos[1:], pos[-1:]])
    vel = (nxt - prev) / (2.0 * point_dt)
    vel[-1] = 0.0
    np.clip(vel, -safety.max_velocity, safety.max_velocity, out=vel)
    return rel, pos, vel
