"""Last line of defence between the policy and the joint command.

Invariants (property-tested): every command is finite, inside [joint_lower, joint_upper], and
differs from the previous command by at most max_velocity * elapsed time per joint, where the
elapsed time is the real time since the previous command (at most `_MAX_TICK_GAP` control
periods): ticks that bunch up after a stall command proportionally smaller steps, so the
commanded speed in real time never exceeds max_velocity. The reference of every step is the
last command, unless the arm is not where the command stream left it: a joint further than
`max_tracking_error` from its last command (episode reset, an obstruction), or a measured position
that moved further between two joint states than the arm can move (`max_measured_jump` plus
twice the max speed times their time apart: an episode reset that teleported the arm, a push).
Then the WHOLE arm (every joint with a tracking tolerance > 0; not a gripper squeezing an object)
restarts from where it is, at rest: re-anchoring only the joints beyond the
tolerance left the others up to `max_tracking_error` from an arm at rest, and its servos closed
that gap at actuator speed (the sim's wrist at 2.2 rad/s after an episode reset). The
very first command, and the first after `reset()` or an e-stop release, is the measured
position clamped into the limits.

Holding = commanding the last safe command again (or the measured position when nothing has
been commanded yet), i.e. an immediate stop for a position-controlled arm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import numpy as np

from vla_ros.config.action import SafetyConfig

# A late tick moves at most this many control periods' worth: no catch-up after a stall, so no
# command step ever exceeds max_velocity * control_dt (and early ticks move proportionally less).
_MAX_TICK_GAP = 1.0
# A measured joint moving faster than this many times its max speed between two joint states was
# displaced, not driven (a position servo catching up its lag stays well below twice the speed).
_JUMP_SPEED_FACTOR = 2.0


@dataclass
class SafetyReport:
    """What the filter did on one tick."""
    nan_target: bool = False           # target missing / wrong size / NaN / Inf -> held
    estop: bool = False                # e-stop latched -> held
    stale: bool = False                # plan or perception too old
    holding: bool = False              # command == previous safe command
    decaying: bool = False             # stale + 'decay': velocity eased to zero
    clamped_position: bool = False
    limited_velocity: bool = False
    limited_acceleration: bool = False
    reanchored: bool = False           # started from / moved next to the measured position (first command,
                                       # reset, e-stop release, last command too far from the arm)
    no_reference: bool = False         # nothing commanded and no measurement: no command at all

    @property
    def intervened(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != 'holding')


class SafetyFilter:
    def __init__(self, config: SafetyConfig, control_dt: float):
        if control_dt <= 0:
            raise ValueError('control_dt must be positive')
        self.config = config
        self.dt = float(control_dt)
        self.lower = np.asarray(config.joint_lower, dtype=np.float64)
        self.upper = np.asarray(config.joint_upper, dtype=np.float64)
        if self.lower.shape != self.upper.shape or np.any(self.lower > self.upper):
            raise ValueError('joint_lower/joint_upper must have equal length and lower <= upper')
        # per-joint limits (a gripper joint has its own); scalars when no per-joint list is given
        self.max_velocity = self._per_joint(config.joint_max_velocity, config.max_velocity)
        self.max_acceleration = self._per_joint(config.joint_max_acceleration, config.max_acceleration)
        # joints that restart with the arm when it is not where the command stream left it (tolerance > 0)
        self.max_tracking_error = self._per_joint(config.joint_max_tracking_error, config.max_tracking_error)
        self.tracked = self.max_tracking_error > 0
        self.max_step = self.max_velocity * self.dt
        self.max_dv = self.max_acceleration * self.dt
        self.last_command: Optional[np.ndarray] = None
        self.last_velocity = np.zeros_like(self.lower)
        self.last_time: Optional[float] = None
        self._restart = False                 # next valid measurement re-seeds the command (e-stop release)
        self._last_measured: Optional[Tuple[np.ndarray, float]] = None   # (position, its time on `now`'s clock)
        self._estop = False
        self.counters: Dict[str, int] = {f.name: 0 for f in fields(SafetyReport)}
        self.counters['ticks'] = 0

    def _per_joint(self, values, scalar: float) -> np.ndarray:
        if values:
            arr = np.asarray(values, dtype=np.float64)
            if arr.shape != self.lower.shape:
                raise ValueError('per-joint safety limits need one value per joint')
            return arr
        return np.full(self.lower.shape, float(scalar))

    @property
    def num_joints(self) -> int:
        return int(self.lower.size)

    @property
    def estop_active(self) -> bool:
        return self._estop

    def set_estop(self, active: bool) -> None:
        """Latch (True) or release (False) the emergency stop.

        After a release motion restarts from the next valid measured position, at rest (until one
        arrives, the last command is held).
        """
        if self._estop and not active:
            self._restart = True
        self._estop = bool(active)

    @property
    def release_pending(self) -> bool:
        """An e-stop release waits to re-seed the command from the next valid measurement."""
        return self._restart

    def reset(self) -> None:
        """Forget the command history (next command starts from the measured position)."""
        self.last_command = None
        self.last_velocity = np.zeros_like(self.lower)
        self.last_time = None

    def is_stale(self, plan_age_s: Optional[float], perception_age_s: Optional[float],
                 joint_state_age_s: Optional[float] = 0.0) -> bool:
        """None age = never received. A timeout <= 0 disables that watchdog."""
        for age, timeout in ((plan_age_s, self.config.stale_plan_timeout_s),
                             (perception_age_s, self.config.stale_perception_timeout_s),
                             (joint_state_age_s, self.config.stale_joint_state_timeout_s)):
            if timeout <= 0:
                continue
            if age is None or not math.isfinite(age) or age > timeout:
                return True
        return False

    def _valid(self, q) -> Optional[np.ndarray]:
        if q is None:
            return None
        arr = np.asarray(q, dtype=np.float64).reshape(-1)
        if arr.shape != self.lower.shape or not np.all(np.isfinite(arr)):
            return None
        return arr

    def _elapsed(self, now: Optional[float]) -> float:
        """Real time since the previous command, capped; the nominal period without a clock."""
        if now is None or self.last_time is None:
            return self.dt
        return float(min(max(now - self.last_time, 0.0), _MAX_TICK_GAP * self.dt))

    def filter(self, target, measured=None, plan_age_s: Optional[float] = None,
               perception_age_s: Optional[float] = None, now: Optional[float] = None,
               joint_state_age_s: Optional[float] = 0.0) -> Tuple[Optional[np.ndarray], SafetyReport]:
        """Turn a policy target into a safe command; returns (command or None, report).

        `now` (seconds, any monotonic clock) makes the velocity and acceleration limits apply per
        elapsed time; `measured` must be the arm's CURRENT position (pass None when it is stale).
        """
        report = SafetyReport()
        self.counters['ticks'] += 1
        measured = self._valid(measured)
        dt = self._elapsed(now)
        jumped = self._measured_jumped(measured, now, joint_state_age_s)
        if self.last_command is not None and self._restart and measured is not None and not self._estop:
            ref = np.clip(measured, self.lower, self.upper)
            report.reanchored = True
            self.last_velocity = np.zeros_like(self.lower)
            self._restart = False
        elif self.last_command is not None:
            ref = self.last_command
            travel = np.zeros_like(self.lower)
            if joint_state_age_s is not None and math.isfinite(joint_state_age_s):
                # an old measurement may trail the arm by what it could travel since
                travel = self.max_velocity * max(float(joint_state_age_s), 0.0)
            tol = self.max_tracking_error + travel
            far = measured is not None and bool(np.any(self.tracked & (np.abs(ref - measured) > tol)))
            # (not while the e-stop is latched: the command holds still; the release restarts from the arm)
            if (far or jumped) and not self._estop:  # the whole arm restarts from rest where it IS:
                # within what it could travel since it was measured, nearest the last command (a stalled
                # sim catching up moves on meanwhile; restarting at a 70 ms old position yanked it back)
                here = np.clip(ref, measured - travel, measured + travel)
                ref = np.where(self.tracked, np.clip(here, self.lower, self.upper), ref)
                report.reanchored = True
                self.last_velocity = np.where(self.tracked, 0.0, self.last_velocity)
        elif measured is not None:
            ref = np.clip(measured, self.lower, self.upper)
            report.clamped_position = bool(np.any(ref != measured))
            report.reanchored = True
        else:
            report.no_reference = True
            self._count(report)
            return None, report

        max_dv = self.max_acceleration * dt
        max_step = self.max_velocity * dt
        target_arr = self._valid(target)
        velocity = np.zeros_like(ref)
        if self._estop:
            report.estop = report.holding = True
        elif self.is_stale(plan_age_s, perception_age_s, joint_state_age_s):
            report.stale = True
            if self.config.stale_behavior == 'decay':
                report.decaying = True
                speed = np.maximum(np.abs(self.last_velocity) - max_dv, 0.0)
                velocity = np.sign(self.last_velocity) * speed
            else:
                report.holding = True
        elif target_arr is None:
            report.nan_target = report.holding = True
        elif dt > 0:
            desired = (target_arr - ref) / dt
            low, high = self.last_velocity - max_dv, self.last_velocity + max_dv
            velocity = np.clip(desired, low, high)
            report.limited_acceleration = bool(np.any(velocity != desired))
            limited = np.clip(velocity, -self.max_velocity, self.max_velocity)
            report.limited_velocity = bool(np.any(limited != velocity))
            velocity = limited

        step = np.clip(velocity * dt, -max_step, max_step)
        command = np.clip(ref + step, self.lower, self.upper)
        if np.any(command != ref + step):
            report.clamped_position = True
        if not np.all(np.isfinite(command)):  # cannot happen with finite ref, kept as a hard guard
            command = ref.copy()
            report.nan_target = report.holding = True
        if dt > 0:
            self.last_velocity = (command - ref) / dt
        self.last_command = command
        if now is not None:
            self.last_time = float(now)
        self._count(report)
        return command.copy(), report

    def _measured_jumped(self, measured: Optional[np.ndarray], now: Optional[float],
                         age: Optional[float]) -> bool:
        """Did the measured arm move further since the previous measurement than it can move?

        The measurement's time is `now - age` (the joint state's stamp); one repeated on later ticks
        has the same time and never jumps. Without a clock or an age nothing is judged.
        """
        limit = float(self.config.max_measured_jump)
        if measured is None or limit <= 0 or now is None or age is None or not math.isfinite(age):
            return False
        t = float(now) - float(age)
        prev, self._last_measured = self._last_measured, (measured.copy(), t)
        if prev is None or t < prev[1]:
            return False
        reach = limit + _JUMP_SPEED_FACTOR * self.max_velocity * (t - prev[1])
        return bool(np.any(self.tracked & (np.abs(measured - prev[0]) > reach)))

    def _count(self, report: SafetyReport) -> None:
        for f in fields(report):
            if getattr(report, f.name):
                self.counters[f.name] += 1
