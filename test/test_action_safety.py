"""SafetyFilter invariants and behaviours, without ROS."""
import numpy as np
import pytest

from vla_ros.action.safety import SafetyFilter
from vla_ros.config.action import SafetyConfig

DT = 0.01


def _cfg(**kw):
    base = dict(joint_lower=[-1.0, -2.0, 0.0], joint_upper=[1.0, 2.0, 0.5], max_velocity=1.0,
                max_acceleration=20.0, stale_plan_timeout_s=1.0, stale_perception_timeout_s=0.5,
                max_tracking_error=0.0)
    base.update(kw)
    return SafetyConfig(**base)


FRESH = dict(plan_age_s=0.0, perception_age_s=0.0)


def _adversarial_target(rng, prev):
    kind = rng.integers(6)
    if kind == 0:
        return rng.uniform(-1e6, 1e6, 3)
    if kind == 1:
        t = rng.normal(size=3)
        t[rng.integers(3)] = rng.choice([np.nan, np.inf, -np.inf])
        return t
    if kind == 2:
        return None
    if kind == 3:
        return rng.normal(size=rng.integers(1, 6))  # wrong length sometimes
    if kind == 4:
        return prev + rng.normal(scale=1e-3, size=3)
    return rng.uniform(-3, 3, 3)


@pytest.mark.parametrize('behavior,max_acc', [('hold', 20.0), ('decay', 20.0), ('decay', 1e4)])
def test_property_commands_stay_within_limits_and_velocity(behavior, max_acc):
    rng = np.random.default_rng(42)
    cfg = _cfg(stale_behavior=behavior, max_acceleration=max_acc, max_tracking_error=0.1)
    f = SafetyFilter(cfg, DT)
    lower, upper = np.array(cfg.joint_lower), np.array(cfg.joint_upper)
    prev = None
    for i in range(5000):
        u = rng.random()
        if u < 0.7 and prev is not None:      # the arm close to its command (normal tracking)
            measured = prev + rng.normal(scale=0.02, size=3)
        elif u < 0.9:                          # anywhere: a reset, a push, a bad sensor
            measured = rng.uniform(-3, 3, 3)
        else:
            measured = np.array([np.nan, 0, 0])
        if rng.random() < 0.01:
            f.set_estop(not f.estop_active)
        ages = dict(plan_age_s=float(rng.choice([0.0, 0.2, 0.3, 2.0])),
                    perception_age_s=float(rng.choice([0.1, 0.1, 0.1, 0.9])))
        cmd, report = f.filter(_adversarial_target(rng, prev if prev is not None else np.zeros(3)), measured, **ages)
        assert cmd is not None and cmd.shape == (3,)
        assert np.all(np.isfinite(cmd))
        assert np.all(cmd >= lower) and np.all(cmd <= upper)
        if report.reanchored:                  # each joint: one step from its last command or from the arm
            near = np.abs(cmd - np.clip(measured, lower, upper)) <= cfg.max_velocity * DT + 1e-12
            if prev is not None:
                near |= np.abs(cmd - prev) <= cfg.max_velocity * DT + 1e-12
            assert np.all(near), f'step {i}'
        elif prev is not None:
            assert np.max(np.abs(cmd - prev)) <= cfg.max_velocity * DT + 1e-12, f'step {i}'
        prev = cmd
    # The adversarial stream really exercised every guard.
    limited = f.counters['limited_velocity'] if max_acc > 1e3 else f.counters['limited_acceleration']
    assert f.counters['nan_target'] > 0 and limited > 0 and f.counters['stale'] > 0 and f.counters['estop'] > 0
    assert f.counters['clamped_position'] > 0 and f.counters['reanchored'] > 0


def test_first_command_is_clamped_measured_position_and_no_reference_gives_none():
    f = SafetyFilter(_cfg(), DT)
    cmd, report = f.filter(None, None, **FRESH)
    assert cmd is None and report.no_reference
    cmd, report = f.filter(np.array([0.0, 0.0, 0.25]), np.array([5.0, 0.5, 0.25]), **FRESH)
    # First command starts from the measured position clamped into limits, then one
    # acceleration-limited step (from rest: 20 rad/s^2 * 0.01 s -> 0.2 rad/s -> 0.002 rad).
    assert report.clamped_position and report.limited_acceleration
    np.testing.assert_allclose(cmd, [0.998, 0.498, 0.25])


def test_tracks_reachable_target_exactly():
    f = SafetyFilter(_cfg(max_acceleration=1000.0), DT)
    q = np.array([0.1, 0.2, 0.3])
    f.filter(q, q, **FRESH)
    target = q + 0.005  # 0.5 rad/s, below the limit
    cmd, report = f.filter(target, q, **FRESH)
    np.testing.assert_allclose(cmd, target)
    assert not report.intervened


def test_acceleration_is_limited():
    cfg = _cfg(max_velocity=10.0, max_acceleration=20.0)
    f = SafetyFilter(cfg, DT)
    q = np.zeros(3) + 0.1
    f.filter(q, q, **FRESH)
    cmd, report = f.filter(q + 1.0, q, **FRESH)   # asks for 100 rad/s from rest
    assert report.limited_acceleration and not report.limited_velocity
    np.testing.assert_allclose(cmd - q, 0.002)       # 20 rad/s^2 * 0.01 s = 0.2 rad/s for one tick
    cmd2, _ = f.filter(q + 1.0, q, **FRESH)
    np.testing.assert_allclose(cmd2 - cmd, 0.004)


def test_nan_target_holds_last_safe_command():
    f = SafetyFilter(_cfg(), DT)
    q = np.array([0.1, 0.2, 0.3])
    first, _ = f.filter(q, q, **FRESH)
    cmd, report = f.filter(np.array([np.nan, 0.0, 0.0]), q + 0.5, **FRESH)
    assert report.nan_target and report.holding
    np.testing.assert_array_equal(cmd, first)
    cmd, report = f.filter(np.array([0.0, np.inf, 0.0]), q, **FRESH)
    assert report.nan_target
    np.testing.assert_array_equal(cmd, first)


def test_estop_latches_hold_until_released():
    f = SafetyFilter(_cfg(), DT)
    q = np.array([0.0, 0.0, 0.2])
    for k in range(5):
        held, _ = f.filter(q + 0.01 * (k + 1), q, **FRESH)
    f.set_estop(True)
    for _ in range(20):
        cmd, report = f.filter(q + 0.5, q, **FRESH)
        assert report.estop and report.holding
        np.testing.assert_array_equal(cmd, held)
    f.set_estop(False)
    cmd, report = f.filter(q + 0.5, q, **FRESH)
    assert not report.estop and np.any(cmd != held)


def test_watchdog_hold_on_stale_and_missing_inputs():
    f = SafetyFilter(_cfg(stale_behavior='hold'), DT)
    q = np.array([0.0, 0.0, 0.2])
    cmd0, report = f.filter(q + 0.005, q, plan_age_s=None, perception_age_s=0.0)  # never got a plan
    assert report.stale and report.holding
    np.testing.assert_array_equal(cmd0, q)
    moving, _ = f.filter(q + 0.005, q, **FRESH)
    cmd, report = f.filter(q + 0.1, q, plan_age_s=0.1, perception_age_s=0.6)  # perception too old
    assert report.stale and report.holding
    np.testing.assert_array_equal(cmd, moving)
    assert not f.is_stale(0.99, 0.49) and f.is_stale(1.01, 0.0)


def test_watchdog_decay_eases_velocity_to_zero():
    cfg = _cfg(stale_behavior='decay', max_velocity=1.0, max_acceleration=20.0)
    f = SafetyFilter(cfg, DT)
    q = np.array([-0.5, 0.0, 0.1])
    cmd, _ = f.filter(q, q, **FRESH)
    for _ in range(30):  # reach full speed towards +
        cmd, _ = f.filter(cmd + 1.0, q, **FRESH)
    assert f.last_velocity[0] == pytest.approx(1.0)
    speeds = []
    for _ in range(10):
        prev = cmd
        cmd, report = f.filter(cmd + 1.0, q, plan_age_s=5.0, perception_age_s=0.0)
        assert report.decaying
        speeds.append(abs(cmd[0] - prev[0]) / DT)
    # Speed falls by max_acceleration * dt per tick until it is zero.
    np.testing.assert_allclose(speeds[:4], [0.8, 0.6, 0.4, 0.2], atol=1e-9)
    assert speeds[-1] == 0.0


def test_bad_limits_rejected():
    with pytest.raises(ValueError):
        SafetyFilter(_cfg(joint_lower=[1.5, 0.0, 0.0]), DT)
    with pytest.raises(ValueError):
        SafetyFilter(_cfg(), 0.0)


def test_episode_reset_restarts_from_the_measured_position_not_the_last_command():
    """Audit finding 4: after the sim teleported the arm home, commands kept starting from the old command."""
    f = SafetyFilter(_cfg(max_tracking_error=0.15, max_acceleration=1e4), DT)
    q = np.array([0.5, 0.5, 0.25])
    cmd, _ = f.filter(q, q, **FRESH)
    for _ in range(20):                        # arm follows its commands
        cmd, _ = f.filter(q + 0.3, cmd, **FRESH)
    home = np.array([0.0, 0.0, 0.1])           # reset: the arm is elsewhere now
    cmd, report = f.filter(q + 0.3, home, **FRESH)
    assert report.reanchored
    assert np.max(np.abs(cmd - home)) <= 1.0 * DT + 1e-12
    # small tracking lag below the tolerance is left alone
    cmd2, report = f.filter(q + 0.3, cmd - 0.05, **FRESH)
    assert not report.reanchored and np.max(np.abs(cmd2 - cmd)) <= 1.0 * DT + 1e-12


def test_reset_restarts_the_whole_arm_not_only_the_joints_beyond_the_tolerance():
    """sigint_recording row: after an episode reset the joints that landed within max_tracking_error of
    their last command kept it, and the sim's servo pulled the wrist there at 2.2 rad/s."""
    f = SafetyFilter(_cfg(max_tracking_error=0.15, max_acceleration=1e4), DT)
    q = np.array([0.5, 0.5, 0.25])
    cmd, _ = f.filter(q, q, **FRESH)
    for _ in range(20):
        cmd, _ = f.filter(q + 0.3, cmd, **FRESH)
    home = cmd + np.array([-0.5, 0.1, -0.1])   # joint 0 far, joints 1 and 2 within the tolerance
    cmd2, report = f.filter(q + 0.3, home, **FRESH)
    assert report.reanchored
    assert np.max(np.abs(cmd2 - home)) <= 1.0 * DT + 1e-12, (cmd2 - home)


def test_an_old_measurement_restarts_where_the_arm_can_be_now_nearest_the_command():
    """Short fault run at load 10: the sim stalled, the command ran 0.38 rad ahead of a 67 ms old measured
    wrist; restarting AT that old position commanded the arm 0.29 rad back from where the sim's catch-up had
    carried it meanwhile (-4.1 rad/s). The arm can be up to max speed x age from an old measurement."""
    f = SafetyFilter(_cfg(max_tracking_error=0.15, max_acceleration=1e4), DT)
    q = np.array([0.0, 0.0, 0.1])
    cmd, _ = f.filter(q, q, **FRESH)
    for _ in range(40):                        # the command runs ahead at 1 rad/s of an arm that is not measured
        cmd, _ = f.filter(np.array([0.9, 0.0, 0.1]), None, joint_state_age_s=0.1, **FRESH)
    old = np.array([0.0, 0.0, 0.1])            # the last measurement, 0.1 s old: 0.4 rad behind
    cmd2, report = f.filter(np.array([0.9, 0.0, 0.1]), old, joint_state_age_s=0.1, **FRESH)
    assert report.reanchored
    assert cmd2[0] == pytest.approx(0.0 + 1.0 * 0.1, abs=1.0 * DT + 1e-9)   # old + max speed x age
    assert cmd2[1] == pytest.approx(0.0) and cmd2[2] == pytest.approx(0.1)


def test_a_joint_without_tracking_tolerance_keeps_its_command_when_the_arm_restarts():
    """A gripper squeezing a cube sits away from its command on purpose: restarting it at its measured
    opening would loosen the grip (and step its command faster than its own speed limit)."""
    f = SafetyFilter(_cfg(max_tracking_error=0.15, joint_max_tracking_error=[0.15, 0.15, 0.0],
                          max_acceleration=1e4), DT)
    q = np.array([0.5, 0.5, 0.3])
    cmd, _ = f.filter(q, q, **FRESH)
    for _ in range(10):                        # close the "gripper" onto an object it cannot pass
        cmd, _ = f.filter(np.array([0.5, 0.5, 0.2]), np.array([0.5, 0.5, 0.3]), **FRESH)
    squeeze = cmd[2]
    assert squeeze < 0.3 - 0.05
    cmd2, report = f.filter(np.array([0.5, 0.5, 0.2]), np.array([0.0, 0.5, 0.3]), **FRESH)   # arm joint 0 reset
    assert report.reanchored and abs(cmd2[0]) <= 1.0 * DT + 1e-12
    assert abs(cmd2[2] - squeeze) <= 1.0 * DT + 1e-12    # one ordinary step from its own command


def test_a_measured_jump_within_the_tolerance_restarts_from_the_arm():
    """A reset that moved every joint less than max_tracking_error: the measured position jumped further
    between two joint states than the arm can move, so the stream restarts at rest from the arm."""
    f = SafetyFilter(_cfg(max_tracking_error=0.15, max_measured_jump=0.05, max_acceleration=1e4), DT)
    q = np.array([0.2, 0.2, 0.2])
    t = 5.0
    cmd, _ = f.filter(q, q, now=t, joint_state_age_s=0.0, **FRESH)
    for _ in range(20):                        # arm follows one tick behind, measured every tick
        t += DT
        cmd_prev = cmd
        cmd, report = f.filter(q + 0.5, cmd_prev, now=t, joint_state_age_s=0.0, **FRESH)
        assert not report.reanchored
    # the same measurement seen again on a later tick is no jump
    t += DT
    cmd, report = f.filter(q + 0.5, cmd_prev, now=t, joint_state_age_s=DT, **FRESH)
    assert not report.reanchored
    jumped = cmd - np.array([0.1, -0.1, 0.1])  # within 0.15 of the command, 0.1 rad in one sample
    t += DT
    cmd2, report = f.filter(q + 0.5, jumped, now=t, joint_state_age_s=0.0, **FRESH)
    assert report.reanchored and np.max(np.abs(cmd2 - jumped)) <= 1.0 * DT + 1e-12
    # slow drift of the same size over a long time is motion, not a jump
    f2 = SafetyFilter(_cfg(max_tracking_error=0.15, max_measured_jump=0.05, max_acceleration=1e4), DT)
    c, _ = f2.filter(q, q, now=0.0, joint_state_age_s=0.0, **FRESH)
    c, report = f2.filter(q, q + 0.1, now=1.0, joint_state_age_s=0.0, **FRESH)
    assert not report.reanchored


def test_velocity_limit_applies_per_elapsed_time_when_ticks_bunch_up():
    """Audit finding 8: bunched ticks each took a full step, 2.5-16 rad/s in real time."""
    cfg = _cfg(max_acceleration=1e4, max_velocity=1.0)
    f = SafetyFilter(cfg, DT)
    q = np.array([0.0, 0.0, 0.25])
    t = 10.0
    cmd, _ = f.filter(q, q, now=t, **FRESH)
    times, cmds = [t], [cmd]
    for k in range(50):                        # 50 ticks released 1 ms apart after a stall
        t += 0.001
        cmd, _ = f.filter(np.array([1.0, 1.0, 0.5]), None, now=t, **FRESH)
        times.append(t)
        cmds.append(cmd)
    speed = np.abs(np.diff(cmds, axis=0)) / np.diff(times)[:, None]
    assert speed.max() <= cfg.max_velocity + 1e-9
    # a tick 0.5 s late moves at most one period's worth (no catch-up burst)
    before = cmd
    cmd, _ = f.filter(np.array([1.0, 1.0, 0.5]), None, now=t + 0.5, **FRESH)
    assert np.max(np.abs(cmd - before)) <= cfg.max_velocity * DT + 1e-12


def test_estop_release_restarts_from_the_measured_position():
    """Audit finding 6 (filter side): release after the arm settled elsewhere restarts from where it is."""
    f = SafetyFilter(_cfg(max_acceleration=1e4), DT)
    q = np.array([0.2, 0.2, 0.2])
    cmd, _ = f.filter(q, q, **FRESH)
    for _ in range(10):
        cmd, _ = f.filter(q + 0.5, cmd, **FRESH)
    f.set_estop(True)
    held, report = f.filter(q + 0.5, cmd, **FRESH)
    assert report.estop and np.array_equal(held, cmd)
    f.set_estop(False)
    settled = cmd - 0.08                      # the arm stopped a bit short of the held command
    cmd, report = f.filter(q + 0.5, settled, **FRESH)
    assert report.reanchored and np.max(np.abs(cmd - settled)) <= 1.0 * DT + 1e-12
    # no valid measurement after release: keep holding, never return None
    f.set_estop(True)
    f.set_estop(False)
    held2, report = f.filter(q + 0.5, None, **FRESH)
    assert held2 is not None


def test_stale_joint_state_holds():
    f = SafetyFilter(_cfg(stale_joint_state_timeout_s=0.5), DT)
    q = np.array([0.1, 0.1, 0.1])
    cmd, _ = f.filter(q, q, **FRESH)
    cmd2, report = f.filter(q + 0.5, None, joint_state_age_s=0.8, **FRESH)
    assert report.stale and report.holding and np.array_equal(cmd, cmd2)
    assert f.is_stale(0.0, 0.0, None) and not f.is_stale(0.0, 0.0, 0.1)
