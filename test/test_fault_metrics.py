"""Judging a fault from probe data (vla_ros/eval/fault_metrics.py), and the relay's mutations. No ROS."""
import types

import numpy as np
import pytest

from vla_ros.eval import fault_metrics as fm
from vla_ros.eval.fault_inject import (FAULTS, RelayFault, mutate_image, mutate_joint_names, select,
                                       shifted_stamp_ns, token_values)

LIM = fm.Limits(np.array([-3.0, -3.0]), np.array([3.0, 3.0]), max_velocity=1.5, max_acceleration=10.0)


def _js(q_of_t, seconds=2.0, rate=100.0):
    t = np.arange(0, seconds, 1 / rate)
    q = np.array([q_of_t(x) for x in t])
    return fm.Series(t, (t * 1e9).astype(np.int64), q, np.gradient(q, t, axis=0))   # sim qvel = true speed


def test_measured_speed_in_real_time_and_teleports_left_out():
    ok = fm.measured_violations(_js(lambda t: [1.0 * t, 0.0]), LIM)
    assert ok['velocity'] == ok['acceleration'] == ok['position'] == 0 and ok['peak_speed'] == pytest.approx(1.0)
    # a slowed-down sim (qvel 3x) or a catch-up burst (wall speed 3x) alone is not a violation
    slow_sim = _js(lambda t: [1.0 * t, 0.0])
    slow_sim.extra = slow_sim.extra * 3
    assert fm.measured_violations(slow_sim, LIM)['velocity'] == 0
    fast = fm.measured_violations(_js(lambda t: [3.0 * (t - 1) if t > 1 else 0.0, 0.0]), LIM)
    assert fast['velocity'] > 0 and fast['peak_speed'] == pytest.approx(3.0, rel=0.05)
    reset = fm.measured_violations(_js(lambda t: [0.5 * t if t < 1 else -1.0, 0.0]), LIM)   # teleported home
    assert reset['teleports'] == 1 and reset['velocity'] == 0 and reset['acceleration'] == 0
    out_of_range = fm.measured_violations(_js(lambda t: [0.0, 3.5]), LIM)
    assert out_of_range['position'] == 200


def _reset_mid_motion(jump: float, v_before: float = -1.0):
    """The arm moving at v_before until an episode ends at 1.0 s; the sim publishes the new episode's
    first joint state 1 ms later, the arm teleported by `jump` (below TELEPORT_RAD) and at rest."""
    t1, t2 = np.arange(0, 1.0001, 0.01), 1.001 + np.arange(0, 1.0, 0.01)
    q1 = v_before * t1
    t = np.r_[t1, t2]
    q = np.stack([np.r_[q1, np.full_like(t2, q1[-1] + jump)], 0 * t], 1)
    qvel = np.stack([np.r_[np.full_like(t1, v_before), 0 * t2], 0 * t], 1)
    return fm.Series(t, (t * 1e9).astype(np.int64), q, qvel), [int(1.0005e9)]   # + the done status's stamp


def test_episode_reset_below_the_teleport_threshold_is_no_acceleration():
    """kill_action row: 1 sample at 39.8 rad/s^2 while the arm held and an episode reset fell in. The
    acceleration was judged on wall-clock window speeds only, and windows spanned a 0.28 rad reset."""
    js, resets = _reset_mid_motion(jump=0.28)
    # the sim's own velocities (no speed across a teleport) clear it even without the done status ...
    out = fm.measured_violations(js, LIM)
    assert out['acceleration'] == 0 and out['velocity'] == 0 and out['teleports'] == 0, out
    # ... and with it no window spans the reset at all
    out = fm.measured_violations(js, LIM, resets_ns=resets)
    assert out['acceleration'] == 0 and out['velocity'] == 0 and out['episode_resets'] == 1, out
    assert out['peak_accel'] == pytest.approx(0.0, abs=1e-6)


def test_acceleration_judged_on_both_clocks():
    """A catch-up burst (0.1 s of physics published within 2 ms after a 0.1 s stall) is a wall-clock
    artefact; a slowed sim is a sim-clock artefact; a servo step (a real fling) shows on both."""
    s = np.arange(0, 2.5, 0.01)                  # sim time
    wall = np.where(s < 1.0, s, np.where(s < 1.1, 1.1 + (s - 1.0) * 0.02, s + 0.002))
    burst = fm.Series(wall, (wall * 1e9).astype(np.int64), np.stack([1.2 * s, 0 * s], 1),
                      np.stack([1.2 + 0 * s, 0 * s], 1))
    out = fm.measured_violations(burst, LIM)
    assert out['acceleration'] == 0 and out['peak_accel'] < 1.0, out
    slowed = _js(lambda t: [0.5 * np.sin(2 * t), 0.0])
    slowed.extra = slowed.extra * 40             # the sim's own velocities disagree wildly with the wall clock
    assert fm.measured_violations(slowed, LIM)['acceleration'] == 0
    step = _js(lambda t: [0.6 * (1 - np.exp(-(t - 1) / 0.04)) if t > 1 else 0.0, 0.0])
    out = fm.measured_violations(step, LIM)
    assert out['acceleration'] > 0 and out['velocity'] > 0 and out['peak_accel'] > 30, out


def test_time_to_hold_and_recover():
    t = np.arange(0, 3, 0.01)
    # moving until 1.2 s, holding until 2.0 s, moving again
    pos = np.where(t < 1.2, t, np.where(t < 2.0, 1.2, 1.2 + (t - 2.0)))
    cmd = fm.Series(t, (t * 1e9).astype(np.int64), pos[:, None])
    assert fm.time_to_hold(cmd, 1.0, 2.0) == pytest.approx(0.2, abs=0.011)
    assert fm.time_to_recover(cmd, 1.9, 3.0) == pytest.approx(0.11, abs=0.011)
    assert fm.time_to_hold(fm.Series(t, (t * 1e9).astype(np.int64), t[:, None]), 1.0, 2.0) is None
    # a held arm re-anchored once (episode reset) has not recovered; one that moves again has
    held = np.where(t < 2.5, 1.2, 0.7)
    assert fm.time_to_recover(fm.Series(t, (t * 1e9).astype(np.int64), held[:, None]), 1.9, 3.0) is None
    gap = fm.Series(t[t < 1.0], (t[t < 1.0] * 1e9).astype(np.int64), t[t < 1.0][:, None])   # stream stops
    assert fm.time_to_hold(gap, 1.0, 2.0) == 0.0


def test_bag_and_drop_bookkeeping():
    probe = [(0.5, 'a'), (1.5, 'b'), (2.5, 'c')]
    assert fm.missing_from_bag(probe, {'a', 'c'}, 1.0, 3.0) == (2, 1)
    before = {'/vla/action': {'drop_plan_future_stamp': '1', 'mode': 'running'}}
    after = {'/vla/action': {'drop_plan_future_stamp': '4', 'dropped': '9'}, '/vla/perception': {'drops.x': '2'}}
    assert fm.drop_deltas(before, after) == {'action.drop_plan_future_stamp': 3, 'perception.drops.x': 2}


def test_relay_mutations_and_catalogue():
    assert shifted_stamp_ns(10 * 10**9, RelayFault(kind='stamp', stamp_offset_s=3600)) == 3610 * 10**9
    assert shifted_stamp_ns(10 * 10**9, RelayFault(kind='stamp', stamp_abs_ns=1)) == 1
    assert np.all(np.isnan(token_values(4, 'nan'))) and np.all(token_values(2, 'huge') == np.float32(1e30))
    img = types.SimpleNamespace(encoding='rgb8', height=4, width=4, step=12, data=b'x' * 48)
    mutate_image(img, 'empty')
    assert img.data == b''
    names, pos, vel = mutate_joint_names(['a', 'b', 'c'], [1, 2, 3], [0, 0, 0], 'duplicate')
    assert names == ['a', 'a', 'c'] and pos == [1, 2, 3]
    assert mutate_joint_names(['a', 'b'], [1, 2], [0, 0], 'missing') == (['a'], [1], [0])
    assert RelayFault.from_json(RelayFault(kind='loss', loss=0.5).to_json()).loss == 0.5
    short = select(short=True)
    assert short[-1].name == 'sigint_recording' and len(short) < len(FAULTS)
    with pytest.raises(ValueError):
        select(['no_such_fault'])
