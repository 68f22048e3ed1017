"""Time rules (vla_ros/timing.py): stamp gates, clock jumps, staleness, joints by name. No ROS."""
import numpy as np
import pytest

from vla_ros.nodes.common import StampGate as NodeStampGate  # what the nodes use
from vla_ros.timing import (FUTURE_STAMP, MISSING_STAMP, OUT_OF_ORDER_STAMP, STALE_STAMP, JointStateTracker,
                            StampGate, age_s, local_time_of_stamp, positions_by_name, stamp_to_ns)

S = 1_000_000_000
NOW = 1_700_000_000 * S
ARM = ['joint1', 'joint2', 'joint3']


def test_one_stamp_from_the_future_does_not_wedge_the_gate():
    """Audit finding 1: one pair stamped an hour ahead made every later real frame 'out of order'."""
    gate = NodeStampGate(1.0)
    assert gate.check(NOW + 3600 * S, NOW) == FUTURE_STAMP
    accepted = [gate.check(NOW + k * S // 10, NOW + k * S // 10 + S // 100) for k in range(1, 21)]
    assert accepted == [None] * 20


def test_gate_reasons_missing_future_stale_out_of_order():
    gate = StampGate(max_age_s=1.0, max_future_s=0.2)
    assert gate.check(0, NOW) == MISSING_STAMP
    assert gate.check(NOW + S // 2, NOW) == FUTURE_STAMP
    assert gate.check(NOW + S // 10, NOW) is None          # within the allowed clock offset
    assert gate.check(NOW - 2 * S, NOW) == STALE_STAMP
    assert gate.check(NOW - S // 2, NOW) == OUT_OF_ORDER_STAMP
    assert gate.check(0 + 1, NOW) == STALE_STAMP               # 1970
    disabled = StampGate(max_age_s=0.0, max_future_s=0.2)
    assert disabled.check(NOW - 3600 * S, NOW) is None         # no age check, still a valid stamp


def test_backwards_clock_jump_resets_the_gate_instead_of_freezing_it():
    gate = StampGate(max_age_s=1.0, max_future_s=0.5, clock_jump_s=1.0)
    t = 1000 * S
    for k in range(10):
        assert gate.check(t + k * S // 10, t + k * S // 10) is None
    # sim reset / /clock restart: the node clock now reads 5 s and stamps follow it
    results = [gate.check(5 * S + k * S // 10, 5 * S + k * S // 10 + S // 100) for k in range(10)]
    assert results == [None] * 10 and gate.resets == 1 and gate.clock.jumps == 1
    # small backwards wobble below the tolerance is not a jump
    assert gate.check(5 * S + 2 * S, 5 * S + 2 * S - S // 2) is None and gate.clock.jumps == 1


def test_small_jump_leaving_last_stamp_in_the_future_also_resets():
    gate = StampGate(max_age_s=5.0, max_future_s=0.5, clock_jump_s=10.0)
    assert gate.check(100 * S, 100 * S) is None
    # clock steps back 3 s (below the 10 s jump tolerance) but the remembered stamp is now 3 s ahead
    assert gate.check(97 * S + S // 10, 97 * S + S // 5) is None and gate.resets == 1


def test_age_and_local_time_of_stamp():
    assert age_s(NOW - S // 4, NOW) == pytest.approx(0.25)
    # a 1970 stamp seen at monotonic 50.0 lies 56 years before it: any watchdog calls it stale
    t = local_time_of_stamp(1, NOW, 50.0)
    assert 50.0 - t > 50 * 365 * 24 * 3600
    assert local_time_of_stamp(NOW - S // 10, NOW, 50.0) == pytest.approx(49.9)


def test_stamp_to_ns():
    class T:
        sec, nanosec = 3, 7
    assert stamp_to_ns(T) == 3 * S + 7


def test_joint_tracker_merges_publishers_by_name_and_ages_the_oldest_joint():
    tr = JointStateTracker(ARM, max_future_s=0.5)
    assert tr.update(['joint2', 'joint1'], [0.2, 0.1], NOW, NOW) is None
    assert tr.positions() is None and tr.missing() == ['joint3'] and tr.age_s(NOW) is None
    assert tr.update(['joint3', 'finger'], [0.3, 0.04], NOW, NOW) is None
    np.testing.assert_allclose(tr.positions(), [0.1, 0.2, 0.3])
    # audit finding 3: the arm driver falls silent while the gripper keeps publishing
    for k in range(1, 11):
        t = NOW + k * S // 10
        assert tr.update(['finger'], [0.04], t, t) == JointStateTracker.FOREIGN
    assert tr.age_s(NOW + S) == pytest.approx(1.0)


def test_joint_tracker_rejects_duplicates_length_future_nan_and_old_stamps():
    tr = JointStateTracker(ARM)
    assert tr.update(['joint1', 'joint1', 'joint2', 'joint3'], [0, 1, 2, 3], NOW, NOW) == JointStateTracker.DUPLICATE
    assert tr.update(ARM, [0, 1], NOW, NOW) == JointStateTracker.LENGTH
    assert tr.update(ARM, [0, 1, 2], NOW + 3600 * S, NOW) == FUTURE_STAMP
    assert tr.update(ARM, [0, np.nan, 2], NOW, NOW) == JointStateTracker.NON_FINITE
    assert tr.update(ARM, [0, 1, 2], 0, NOW) == MISSING_STAMP
    assert tr.positions() is None                              # nothing kept from rejected messages
    assert tr.update(ARM, [0, 1, 2], NOW, NOW) is None
    assert tr.update(ARM, [5, 5, 5], NOW - S, NOW) == OUT_OF_ORDER_STAMP
    np.testing.assert_allclose(tr.positions(), [0, 1, 2])
    # a 1970 stamp is accepted as a value but is ancient: age says so
    tr2 = JointStateTracker(ARM)
    assert tr2.update(ARM, [0, 1, 2], 1, NOW) is None and tr2.age_s(NOW) > 1e9
    with pytest.raises(ValueError):
        JointStateTracker(['a', 'a'])


def test_joint_tracker_forgets_joints_after_a_backwards_clock_jump():
    tr = JointStateTracker(ARM, clock_jump_s=1.0)
    assert tr.update(ARM, [0, 1, 2], 1000 * S, 1000 * S) is None
    assert tr.update(['finger'], [0.0], 5 * S, 5 * S) == JointStateTracker.FOREIGN
    assert tr.positions() is None                              # old stamps meant another timeline
    assert tr.update(ARM, [0, 1, 2], 5 * S, 5 * S) is None and tr.age_s(5 * S) == 0.0


def test_positions_by_name():
    np.testing.assert_allclose(positions_by_name(['b', 'a', 'c'], [2.0, 1.0, 3.0], ['a', 'b']), [1.0, 2.0])
    for names, pos in ((['a', 'a', 'b'], [1, 2, 3]), (['a'], [1.0]), (['a', 'b'], [1.0])):
        with pytest.raises(ValueError):
            positions_by_name(names, pos, ['a', 'b'])
