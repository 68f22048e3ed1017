"""Judging one fault from what a probe saw (plain numpy, no ROS).

* limit violations are judged on the MEASURED arm state (sim joint_states: position; velocity and
  acceleration on the sim's clock AND the wall clock, see measured_violations), with small
  tolerances for the simulator's PD tracking; the commanded stream's own peak speed is reported
  beside them;
* time to hold: from injection until the command stream stops changing (or stops) for
  `HOLD_S`; time to recover: from the end of the injection until commands move again;
* bag completeness: every message the probe received on a reliable topic must be in the bag.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

HOLD_S = 0.1            # commands unchanged (or absent) this long = holding
SPEED_WINDOW_S = 0.2    # measured speed = position change over this much wall-clock time (longer than the
#                         sim's largest physics catch-up burst, 0.1 s, which would otherwise read as speed)
ACCEL_WINDOW_S = 0.1    # acceleration = change between consecutive speeds over this window
TELEPORT_RAD = 0.3      # a joint moving this much between two joint states (10 ms) was reset, not moved
SIM_SAMPLE_PERIOD_S = 0.01   # the sim arm's joint-state period in sim time (1 / sim.joint_state_rate_hz)
MOVE_EPS = 1e-6         # rad: a command differing by more than this from the previous one moves
RECOVER_STEPS = 3       # recovered = this many moving commands ...
RECOVER_WINDOW_S = 0.5  # ... within this long (one re-anchoring step after an episode reset is no motion)


@dataclasses.dataclass
class Limits:
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: float
    max_acceleration: float
    position_tol: float = 0.01          # rad beyond the limit
    velocity_tol: float = 0.25          # fraction above max_velocity: a position-controlled arm catching up
    #                                     its tracking lag while commands ramp at the limit reached +20 % fault-free
    acceleration_tol: float = 2.0       # fraction above max_acceleration: the sim's PD tracking of a
    #                                     10 rad/s^2 command stream peaks at 12-25 rad/s^2 fault-free
    #                                     (wrist joint 6); the pre-fix reset pull measured 67 rad/s^2


@dataclasses.dataclass
class Series:
    """Time-ordered samples: t = probe receive time (s), stamp_ns = header stamp, values [N, J]."""
    t: np.ndarray
    stamp_ns: np.ndarray
    values: np.ndarray
    extra: Optional[np.ndarray] = None   # joint velocities for joint states

    @classmethod
    def from_rows(cls, rows: Sequence[tuple], joints: int) -> 'Series':
        if not rows:
            return cls(np.zeros(0), np.zeros(0, np.int64), np.zeros((0, joints)), np.zeros((0, joints)))
        t = np.array([r[0] for r in rows], float)
        stamp = np.array([r[1] for r in rows], np.int64)
        values = np.array([r[2] for r in rows], float)
        extra = np.array([r[3] for r in rows], float) if len(rows[0]) > 3 else None
        return cls(t, stamp, values, extra)

    def window(self, t0: float, t1: float) -> 'Series':
        m = (self.t >= t0) & (self.t <= t1)
        return Series(self.t[m], self.stamp_ns[m], self.values[m], None if self.extra is None else self.extra[m])


def measured_violations(js: Series, limits: Limits, resets_ns: Sequence[int] = (),
                        sim_sample_period_s: float = SIM_SAMPLE_PERIOD_S) -> Dict[str, float]:
    """Joint-state samples beyond position / velocity / acceleration limits, and the peaks.

    Which speed: the arm's motion is judged on two clocks and a window counts only when BOTH say
    it was too fast (velocity and acceleration alike):
    * sim time: the simulator's own joint velocities (its physics state). Speed of a window =
      mean |qvel| of its samples; acceleration = change of the windows' mean qvel over the sim time
      between them (samples x `sim_sample_period_s`: the sim publishes a joint state at most every
      period of sim time, so this is an upper bound). An episode reset (teleport) has no velocity;
      but when the sim falls behind the wall clock, a real-time command stream looks faster here;
    * wall clock: position change over header stamps (`SPEED_WINDOW_S`, `ACCEL_WINDOW_S`), what a
      real arm executing the same commands in real time would do; but a physics catch-up burst (up
      to 0.1 s of physics published within a few ms) or a teleport looks faster here.
    A real fling (a servo closing a position step) shows on both clocks; each artefact on one only.
    Windows never span an episode reset: one starts at every reset the sim announced (TaskStatus
    done, `resets_ns` = their stamps) and at any unannounced jump (> TELEPORT_RAD in one sample, a
    restarted sim), counted in 'episode_resets' and 'teleports'. Peaks are of the judged (smaller) values;
    'peak_speed_sim' is the largest instantaneous sim velocity.
    """
    out = {'position': 0, 'velocity': 0, 'acceleration': 0, 'peak_speed': 0.0, 'peak_accel': 0.0,
           'peak_speed_sim': 0.0, 'teleports': 0, 'episode_resets': 0}
    q = js.values
    if q.shape[0] == 0:
        return out
    out['position'] = int(np.sum(np.any((q < limits.lower - limits.position_tol) |
                                        (q > limits.upper + limits.position_tol), axis=1)))
    qvel = js.extra if js.extra is not None and js.extra.shape == q.shape else None
    if qvel is not None:
        out['peak_speed_sim'] = float(np.abs(qvel).max())
    t = js.stamp_ns / 1e9
    jump = np.zeros(q.shape[0], bool)
    jump[1:] = np.abs(np.diff(q, axis=0)).max(axis=1) > TELEPORT_RAD
    announced = np.zeros(q.shape[0], bool)
    for stamp in resets_ns:                  # the first sample stamped after the reset starts a new episode
        k = int(np.searchsorted(js.stamp_ns, int(stamp), side='right'))
        if 0 < k < q.shape[0]:
            announced[k] = True
    out['teleports'] = int(np.sum(jump & ~announced))
    out['episode_resets'] = int(announced.sum())
    segment = np.cumsum(jump | announced)

    i, j, v = _windows(t, q, segment, SPEED_WINDOW_S)
    if i.size:
        speed = np.abs(v)
        if qvel is not None:
            speed = np.minimum(speed, _window_mean(np.abs(qvel), i, j))
        out['peak_speed'] = float(speed.max())
        out['velocity'] = int(np.sum(np.any(speed > limits.max_velocity * (1 + limits.velocity_tol), axis=1)))

    i, j, v = _windows(t, q, segment, ACCEL_WINDOW_S)
    if i.size:
        k = np.searchsorted(t[i], t[i] + ACCEL_WINDOW_S)     # the next window (index into i)
        ok = k < i.size
        a, b = np.nonzero(ok)[0], k[ok]
        dt = t[i][b] - t[i][a]
        good = (dt > 0) & (segment[i][b] == segment[i][a])
        a, b, dt = a[good], b[good], dt[good]
        acc = np.abs(v[b] - v[a]) / dt[:, None]
        if qvel is not None and a.size:
            v_sim = _window_mean(qvel, i, j)
            centres = (i + j) / 2.0                          # in samples
            dt_sim = (centres[b] - centres[a]) * sim_sample_period_s
            acc = np.minimum(acc, np.abs(v_sim[b] - v_sim[a]) / dt_sim[:, None])
        if acc.size:
            out['peak_accel'] = float(acc.max())
            out['acceleration'] = int(np.sum(np.any(
                acc > limits.max_acceleration * (1 + limits.acceleration_tol), axis=1)))
    return out


def _windows(t: np.ndarray, q: np.ndarray, segment: np.ndarray, window_s: float):
    """(start indices i, end indices j, wall-clock speeds [N, J]) of windows `window_s` of stamps
    long, each within one reset-free segment."""
    i = np.arange(q.shape[0])
    j = np.searchsorted(t, t + window_s)
    ok = j < q.shape[0]
    i, j = i[ok], j[ok]
    ok = (segment[i] == segment[j]) & (t[j] > t[i])
    i, j = i[ok], j[ok]
    v = (q[j] - q[i]) / (t[j] - t[i])[:, None] if i.size else np.zeros((0, q.shape[1]))
    return i, j, v


def _window_mean(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Mean of samples i..j (inclusive) of x [N, J], per window."""
    csum = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    return (csum[j + 1] - csum[i]) / (j + 1 - i)[:, None]


def commanded_peak_speed(cmd: Series) -> float:
    """Peak joint speed of the command stream in real time (by the commands' header stamps)."""
    if cmd.values.shape[0] < 2:
        return 0.0
    dt = np.diff(cmd.stamp_ns) / 1e9
    ok = dt > 0
    if not np.any(ok):
        return 0.0
    return float((np.abs(np.diff(cmd.values, axis=0))[ok] / dt[ok, None]).max())


def time_to_hold(cmd: Series, t0: float, t_end: float) -> Optional[float]:
    """Seconds from t0 until commands stop changing or stop arriving for HOLD_S (None: never held)."""
    w = cmd.window(t0, t_end)
    if w.t.size == 0:
        return 0.0 if t_end - t0 >= HOLD_S else None       # nothing commanded at all: the arm holds
    times = np.concatenate([[t0], w.t])
    gaps = np.diff(times)
    if gaps.size and gaps[0] >= HOLD_S:
        return 0.0
    moving = np.concatenate([[True], np.any(np.abs(np.diff(w.values, axis=0)) > MOVE_EPS, axis=1)])
    last_move = w.t[0]
    for i in range(1, w.t.size):
        if w.t[i] - w.t[i - 1] >= HOLD_S:                 # stream stopped
            return float(max(w.t[i - 1] - t0, 0.0))
        if moving[i]:
            last_move = w.t[i]
        elif w.t[i] - last_move >= HOLD_S:
            return float(max(last_move - t0, 0.0))
    if t_end - w.t[-1] >= HOLD_S:
        return float(max(w.t[-1] - t0, 0.0))
    return None


def time_to_recover(cmd: Series, t1: float, t_end: float) -> Optional[float]:
    """Seconds from t1 (fault removed) until commands move again (None: not within t_end).

    Moving = at least RECOVER_STEPS changing commands within RECOVER_WINDOW_S: a hold re-anchored
    once to the measured arm (after an episode reset) is one step, not motion.
    """
    w = cmd.window(t1, t_end)
    if w.t.size < 2:
        return None
    moving = np.any(np.abs(np.diff(w.values, axis=0)) > MOVE_EPS, axis=1)
    t_move = w.t[1:][moving]
    for i in range(t_move.size - RECOVER_STEPS + 1):
        if t_move[i + RECOVER_STEPS - 1] - t_move[i] <= RECOVER_WINDOW_S:
            return float(t_move[i] - t1)
    return None


def missing_from_bag(probe: Iterable[Tuple[float, object]], in_bag: Set[object], t_from: float,
                     t_to: float) -> Tuple[int, int]:
    """(messages the probe received in [t_from, t_to], how many of them the bag lacks)."""
    seen = [key for t, key in probe if t_from <= t <= t_to]
    return len(seen), sum(1 for key in seen if key not in in_bag)


def drop_deltas(before: Dict[str, Dict[str, str]], after: Dict[str, Dict[str, str]]) -> Dict[str, int]:
    """Increase of every drop counter on /diagnostics between two snapshots ('node.key': delta)."""
    out: Dict[str, int] = {}
    for node, values in after.items():
        for key, value in values.items():
            if 'drop' not in key or key in ('dropped', 'drops_total', 'drops'):
                continue
            try:
                delta = int(float(value)) - int(float(before.get(node, {}).get(key, 0)))
            except ValueError:
                continue
            if delta > 0:
                out[f'{node.rsplit("/", 1)[-1]}.{key}'] = delta
    return out


def summarise(rows: List[dict]) -> str:
    """The table printed at the end of a run."""
    head = (f'{"fault":<18} {"viol(p/v/a)":>11} {"peak v":>6} {"cmd v":>6} {"hold s":>6} {"recov s":>7} '
            f'{"bag lost":>9} {"episode":>8}  drops')
    lines = [head, '-' * len(head)]
    for r in rows:
        v = r['violations']
        hold = '-' if r['time_to_hold_s'] is None else f'{r["time_to_hold_s"]:.2f}'
        rec = '-' if r['time_to_recover_s'] is None else f'{r["time_to_recover_s"]:.2f}'
        ep = {True: 'success', False: 'fail', None: '?'}[r.get('episode_success')]
        drops = ', '.join(f'{k}={n}' for k, n in sorted(r['drops'].items())[:4])
        lines.append(f'{r["fault"]:<18} {v["position"]:>3}/{v["velocity"]:>3}/{v["acceleration"]:>3} '
                     f'{v["peak_speed"]:>6.2f} {r["commanded_peak_speed"]:>6.2f} {hold:>6} {rec:>7} '
                     f'{r["bag_missing"]:>4}/{r["bag_checked"]:<4} {ep:>8}  {drops}')
    return '\n'.join(lines)
