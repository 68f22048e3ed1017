"""Control timing and smoothness metrics on synthetic series and a synthetic bag."""
import json

import numpy as np
import pytest

from vla_ros.eval.bag_io import RECORDER_LOSSES_KEY, BagWriter
from vla_ros.eval.control_timing import (analyze_bag, format_table, gap_intervals, gaps_on_grid, gaps_vs_floor,
                                         motion_smoothness, period_stats)


def test_period_stats_counts_jitter_and_gaps():
    t = np.arange(1000) * 0.01
    t[500:] += 0.007            # one 17 ms period
    t[200] += 0.001             # 11 ms then 9 ms
    s = period_stats(t, 0.01)
    assert s['samples'] == 1000 and s['gaps_over_5ms'] == 1 and s['max_gap_ms'] == pytest.approx(17.0)
    assert period_stats(t, 0.01, gap_ms=7.5)['gaps_over_7.5ms'] == 0
    assert gaps_on_grid(t, 0.01) == 0                 # the 17 ms period is a late tick, not missing ones
    assert gaps_on_grid(np.delete(t, [700, 701]), 0.01) == 1   # two missing messages: a 30 ms period
    assert s['jitter_max_ms'] == pytest.approx(7.0) and s['jitter_p50_ms'] == pytest.approx(0.0, abs=1e-9)
    assert s['rate_hz'] == pytest.approx(999 / (9.99 + 0.007))


def test_gaps_are_matched_with_the_probe_threads_late_wakeups():
    t = 100.0 + np.arange(1000) * 0.01
    t[300:] += 0.009            # gap 1: 19 ms period ending at t[300]
    t[700:] += 0.012            # gap 2: 22 ms period ending at t[700]
    gaps = gap_intervals(t, 0.01)
    assert gaps.shape == (2, 2) and np.allclose((gaps[:, 1] - gaps[:, 0]) * 1e3, [19.0, 22.0])
    # The probe woke 8 ms late inside gap 1 only; a 3 ms late wake-up inside gap 2 is below the 5 ms mark.
    events = [{'wall_s': gaps[0, 0] + 0.012, 'late_ms': 8.0}, {'wall_s': gaps[1, 0] + 0.01, 'late_ms': 3.0},
              {'wall_s': 50.0, 'late_ms': 30.0}]
    floor = gaps_vs_floor(gaps, events)
    assert floor['gaps'] == 2 and floor['gaps_with_probe_late_too'] == 1 and floor['probe_late_wakeups'] == 2
    assert floor['gap_list'][1][1] == pytest.approx(22.0)
    assert gaps_vs_floor(gaps, [])['gaps_with_probe_late_too'] == 0


def test_seam_jerk_is_found_where_the_seam_is():
    t = np.arange(0, 10, 0.01)
    q = np.stack([0.1 * np.sin(t), 0.05 * t], axis=1)
    seams = [2.0, 4.0, 6.0]
    for s in seams:                                # a velocity step at every seam
        q[t >= s, 0] += 0.02 * (t[t >= s] - s)
    smooth = motion_smoothness(t, np.stack([0.1 * np.sin(t), 0.05 * t], axis=1), seams)
    kinky = motion_smoothness(t, q, seams)
    assert kinky['seams'] == 3
    assert kinky['max_jerk'] > 100 * smooth['max_jerk']
    assert kinky['seam_jerk_p95'] > 100 * kinky['off_seam_jerk_p95'] and kinky['seam_to_off_seam'] > 100
    assert smooth['seam_to_off_seam'] == pytest.approx(1.0, rel=0.5)


def test_analyze_bag_reads_stamps_receive_times_and_joint_states(tmp_path):
    pytest.importorskip('rclpy')
    from sensor_msgs.msg import JointState

    from vla_ros.nodes.common import ns_to_stamp
    bag = tmp_path / 'bag'
    base = 1_700_000_000 * 10**9

    def js(ns, q):
        msg = JointState(name=['a'], position=[float(q)])
        msg.header.stamp = ns_to_stamp(ns)
        return msg
    with BagWriter(bag) as w:
        w.add_topic('/vla/action/command', 'sensor_msgs/msg/JointState')
        w.add_topic('/vla/joint_states', 'sensor_msgs/msg/JointState')
        for k in range(1500):
            stamp = base + k * 10_000_000 + (3_000_000 if k == 1000 else 0)   # one tick 3 ms late
            recv = stamp + 400_000 + (6_000_000 if k == 700 else 0)
            w.write('/vla/joint_states', js(base + k * 10_000_000, 0.001 * k), base + k * 10_000_000 + 1)
            if k in (1200, 1201, 1202):   # published, lost by the recorder: it notes the gap at 1203
                continue
            if k == 1350:                 # never published: a silent stream, no note
                continue
            if k == 1203:
                w.set_custom_data(RECORDER_LOSSES_KEY + '/vla/action/command', json.dumps([[recv, 3]]))
            w.write('/vla/action/command', js(stamp, 0.0), recv)
    out = analyze_bag(str(bag), skip_s=1.0)
    st, rc = out['by_header_stamp'], out['by_receive_time']
    assert st['samples'] == 1396 and st['jitter_max_ms'] == pytest.approx(30.0, abs=1e-3)
    assert st['gaps_over_5ms'] == 2 and st['max_gap_ms'] == pytest.approx(40.0, abs=1e-3)
    assert st['gaps_lost_in_recording'] == 1 and st['messages_lost_in_recording'] == 3
    assert st['gaps_stream'] == 1 and st['max_gap_stream_ms'] == pytest.approx(20.0, abs=1e-3)
    assert st['gaps_on_grid'] == 2      # both gaps keep the 10 ms grid (no late tick in them)
    assert rc['gaps_over_5ms'] == 3 and rc['max_gap_ms'] == pytest.approx(40.0, abs=1e-3)
    assert rc['gaps_lost_in_recording'] == 1 and rc['gaps_stream'] == 2
    assert rc['max_gap_stream_ms'] == pytest.approx(20.0, abs=1e-3)
    assert out['arm_motion']['max_jerk'] < 1e-3          # constant velocity
    assert 'by_header_stamp.rate_hz' in format_table({'run': out})
