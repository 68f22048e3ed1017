"""Time rules of the stack, in one place (no ROS imports: plain integers of nanoseconds).

Every node judges its inputs by their header stamps against its OWN clock (`node.get_clock()`,
so `use_sim_time` is honoured), never by arrival time:

* a stamp of 0 is missing, a stamp further ahead of the clock than `max_future_s` is from the
  future (a host whose clock jumped, a bad driver) and a stamp older than `max_age_s` is stale:
  all three are counted drops and none of them is remembered;
* stamps of one stream must not go backwards (out of order);
* when the clock itself goes backwards by more than `clock_jump_s` (sim reset, `/clock`
  restart, an NTP step) every gate resets instead of rejecting all later stamps for good.

`JointStateTracker` assembles the arm's joint positions BY NAME from any number of JointState
publishers (arm driver, gripper driver) and knows how old each joint's last value is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

NS_PER_S = 1_000_000_000

# Drop reasons (diagnostics keys).
MISSING_STAMP = 'missing_stamp'
FUTURE_STAMP = 'future_stamp'
STALE_STAMP = 'stale_stamp'
OUT_OF_ORDER_STAMP = 'out_of_order_stamp'


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (anything with sec/nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def s_to_ns(seconds: float) -> int:
    return int(round(float(seconds) * NS_PER_S))


def age_s(stamp_ns: int, now_ns: int) -> float:
    """How old a stamp is on the node's clock (negative = from the future)."""
    return (int(now_ns) - int(stamp_ns)) / NS_PER_S


class ClockJumpDetector:
    """Notices the node clock going backwards by more than `tolerance_s` (counted in `jumps`)."""

    def __init__(self, tolerance_s: float):
        self.tolerance_ns = s_to_ns(tolerance_s)
        self.last_now_ns: Optional[int] = None
        self.jumps = 0

    def observe(self, now_ns: int) -> bool:
        """Return True when `now_ns` is a backwards jump from the last clock reading."""
        jumped = self.last_now_ns is not None and now_ns < self.last_now_ns - self.tolerance_ns
        if jumped:
            self.jumps += 1
        if self.last_now_ns is None or jumped or now_ns > self.last_now_ns:
            self.last_now_ns = int(now_ns)
        return jumped


class StampGate:
    """Accepts one stream's stamps that are present, not from the future, fresh and in order.

    `max_age_s <= 0` disables the age check, `max_future_s < 0` the future check. The gate
    remembers only stamps it accepted, so a single bad stamp can never block later good ones.
    """

    def __init__(self, max_age_s: float, max_future_s: float = 0.5, clock_jump_s: float = 1.0):
        self.max_age_ns = s_to_ns(max_age_s)
        self.max_future_ns = s_to_ns(max_future_s)
        self.last_ns: Optional[int] = None
        self.clock = ClockJumpDetector(clock_jump_s)
        self.resets = 0

    @property
    def max_age_s(self) -> float:
        return self.max_age_ns / NS_PER_S

    @max_age_s.setter
    def max_age_s(self, value: float) -> None:
        self.max_age_ns = s_to_ns(value)

    def reset(self) -> None:
        self.last_ns = None
        self.resets += 1

    def check(self, stamp_ns: int, now_ns: int) -> Optional[str]:
        """Return a drop reason, or None to accept (and remember the stamp)."""
        if self.clock.observe(now_ns):
            self.reset()                       # the clock went back: old stamps mean nothing now
        elif self.last_ns is not None and self.max_future_ns >= 0 and self.last_ns > now_ns + self.max_future_ns:
            self.reset()                       # remembered stamp now lies in the future (small jump)
        if stamp_ns <= 0:
            return MISSING_STAMP
        if self.max_future_ns >= 0 and stamp_ns - now_ns > self.max_future_ns:
            return FUTURE_STAMP
        if self.max_age_ns > 0 and now_ns - stamp_ns > self.max_age_ns:
            return STALE_STAMP
        if self.last_ns is not None and stamp_ns < self.last_ns:
            return OUT_OF_ORDER_STAMP
        self.last_ns = int(stamp_ns)
        return None


def local_time_of_stamp(stamp_ns: int, now_ns: int, local_now: float) -> float:
    """The instant of `stamp_ns` on another clock (e.g. time.monotonic) that reads `local_now` at `now_ns`.

    Lets a loop that runs on a monotonic clock judge input age by stamp: its watchdog then sees
    a 1970 stamp as 56 years old, not as 'just arrived'.
    """
    return float(local_now) - age_s(stamp_ns, now_ns)


@dataclass
class _Joint:
    position: float
    stamp_ns: int


class JointStateTracker:
    """Arm joint positions assembled by joint NAME, with per-joint stamps.

    Any JointState publisher may carry any subset of joints (an arm driver and a gripper driver
    often share `joint_states`). `update` validates one message; `positions` returns the arm's
    joints in configured order once each has been seen, and `age_s` is the age of the OLDEST
    of them, so an arm driver that falls silent is noticed even while a gripper keeps publishing.
    """

    DUPLICATE = 'duplicate_joint_names'
    LENGTH = 'joint_state_length_mismatch'
    NON_FINITE = 'nan_joint_state'
    FOREIGN = 'no_arm_joints'

    def __init__(self, joint_names: Sequence[str], max_future_s: float = 0.5, clock_jump_s: float = 1.0):
        self.joint_names: List[str] = list(joint_names)
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f'duplicate configured joint names: {self.joint_names}')
        self._wanted = set(self.joint_names)
        self.max_future_ns = s_to_ns(max_future_s)
        self.clock = ClockJumpDetector(clock_jump_s)
        self._joints: Dict[str, _Joint] = {}

    def update(self, names: Sequence[str], positions: Iterable[float], stamp_ns: int, now_ns: int) -> Optional[str]:
        """Take one JointState; return a drop reason or None. Nothing is kept from a rejected message."""
        if self.clock.observe(now_ns):
            self._joints.clear()               # stamps from before the jump are meaningless
        names = list(names)
        pos = np.asarray(list(positions), dtype=np.float64).reshape(-1)
        if len(names) != pos.size:
            return self.LENGTH
        if len(set(names)) != len(names):
            return self.DUPLICATE
        if stamp_ns <= 0:
            return MISSING_STAMP
        if self.max_future_ns >= 0 and stamp_ns - now_ns > self.max_future_ns:
            return FUTURE_STAMP
        ours = [(n, float(p)) for n, p in zip(names, pos) if n in self._wanted]
        if not ours:
            return self.FOREIGN
        if not all(math.isfinite(p) for _, p in ours):
            return self.NON_FINITE
        stale = [n for n, _ in ours if n in self._joints and stamp_ns < self._joints[n].stamp_ns]
        if stale:
            return OUT_OF_ORDER_STAMP
        for n, p in ours:
            self._joints[n] = _Joint(p, int(stamp_ns))
        return None

    @property
    def complete(self) -> bool:
        return all(n in self._joints for n in self.joint_names)

    def missing(self) -> List[str]:
        return [n for n in self.joint_names if n not in self._joints]

    def positions(self) -> Optional[np.ndarray]:
        if not self.complete:
            return None
        return np.array([self._joints[n].position for n in self.joint_names], dtype=np.float64)

    def oldest_stamp_ns(self) -> Optional[int]:
        if not self.complete:
            return None
        return min(self._joints[n].stamp_ns for n in self.joint_names)

    def age_s(self, now_ns: int) -> Optional[float]:
        """Age of the oldest arm joint on the node clock (None until every joint was seen)."""
        oldest = self.oldest_stamp_ns()
        return None if oldest is None else age_s(oldest, now_ns)


def positions_by_name(names: Sequence[str], positions: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """Pick `wanted` joints out of one JointState by name (raises ValueError on duplicates/missing)."""
    names = list(names)
    if len(names) != len(positions):
        raise ValueError(f'{len(names)} names but {len(positions)} positions')
    if len(set(names)) != len(names):
        raise ValueError(f'duplicate joint names {sorted({n for n in names if names.count(n) > 1})}')
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ValueError(f'joint_states lacks {missing}')
    return np.asarray([positions[index[n]] for n in wanted], dtype=np.float64)
