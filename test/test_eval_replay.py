"""Offline replay of a recorded bag: two settings on identical frames, compared by the evaluator."""
import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_bag import FRAME_DT_NS, record_sim_bag  # noqa: E402

from vla_ros.eval.bag_io import read_bag  # noqa: E402
from vla_ros.eval.evaluate import main as evaluate_main  # noqa: E402
from vla_ros.eval.replay import main as replay_main  # noqa: E402
from vla_ros.eval.replay_compare import load_frames, pair  # noqa: E402

FAST = ['--no-progress', '--set', 'action.denoising_steps=2']
OFF = ['--set', 'perception.pruning=none', '--set', 'perception.keep_ratio=1.0', '--set', 'planner.cache_enabled=false']


@pytest.fixture(scope='module')
def source_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('replay') / 'source'
    record_sim_bag(path, episodes=2, frames_per_episode=4, image_format='jpeg')
    return path


def _replay(source, out, *extra):
    assert replay_main([str(source), '--out', str(out), *FAST, *extra]) == 0
    with open(out / 'replay.json') as fh:
        return json.load(fh)


def test_replay_two_settings_on_identical_frames(source_bag, tmp_path):
    on = _replay(source_bag, tmp_path / 'on', '--label', 'on')
    off = _replay(source_bag, tmp_path / 'off', '--label', 'off', *OFF)
    again = _replay(source_bag, tmp_path / 'again')
    for summary in (on, off):
        assert summary['frames_processed'] == summary['frames_in_bag'] == 8
        assert summary['frames_without_joint_state'] == 0 and summary['head_from_checkpoint']
    source_stamps = sorted(int(m.header.stamp.sec) * 10**9 + int(m.header.stamp.nanosec)
                           for topic, _, _, m in read_bag(source_bag) if topic.endswith('/compressed'))
    frames_on, frames_off = load_frames(tmp_path / 'on' / 'bag'), load_frames(tmp_path / 'off' / 'bag')
    assert sorted(frames_on) == sorted(frames_off) == source_stamps     # the very same frames
    assert all(len(f['kept']) == 32 for f in frames_on.values())         # demo encoder: 64 patches, keep 0.5
    assert all(len(f['kept']) == 64 for f in frames_off.values())
    assert all(f['actions'].shape == (16, 7) and np.all(np.isfinite(f['actions'])) for f in frames_on.values())
    # plans at planner.rate_hz (2 Hz) of bag time: frames 0 and 5 of each 4-frame episode at 10 Hz
    assert 2 <= sum('subtask' in f for f in frames_on.values()) <= 4

    same = pair(frames_on, load_frames(tmp_path / 'again' / 'bag'))   # deterministic: same noise per frame
    assert same['tokens']['kept_iou_mean'] == 1.0 and same['actions']['max_abs_diff_rad'] == 0.0
    diff = pair(frames_on, frames_off)
    assert diff['tokens']['mean_tokens'] == (32.0, 64.0) and diff['tokens']['kept_iou_mean'] == pytest.approx(0.5)
    assert diff['actions']['frames'] == 8 and diff['actions']['mean_abs_diff_rad'] > 0

    assert evaluate_main([str(tmp_path / 'on' / 'bag'), str(tmp_path / 'off' / 'bag'), '--label', 'on',
                          '--label', 'off', '--out', str(tmp_path / 'cmp'), '--no-progress']) == 0
    table = (tmp_path / 'cmp' / 'comparison.md').read_text()
    assert 'kept-token IoU (mean) | 0.5 |' in table and 'sub-task agreement' in table
    with open(tmp_path / 'cmp' / 'paired_differences.json') as fh:
        assert json.load(fh)['pairs']['off']['frames_common'] == 8


def test_realtime_replay_follows_recorded_timing(source_bag, tmp_path):
    summary = _replay(source_bag, tmp_path / 'rt', '--realtime')
    duration_s = 7 * FRAME_DT_NS / 1e9   # first to last frame of the recording, about 0.8 s
    assert summary['wall_s'] >= duration_s
    assert summary['frames_processed'] + summary['frames_skipped_realtime'] == 8


def test_replay_through_nodes_keeps_source_stamps(source_bag, tmp_path):
    """The bag played into the real nodes over DDS (sim clock): tokens for the recorded frames, same stamps."""
    import subprocess
    out = tmp_path / 'nodes'
    env = dict(os.environ, ROS_DOMAIN_ID=str(7 + os.getpid() % 100))
    proc = subprocess.run([sys.executable, '-m', 'vla_ros.eval.replay', str(source_bag), '--out', str(out),
                           '--through-nodes', '--label', 'nodes'], env=env, timeout=240)
    assert proc.returncode == 0
    with open(out / 'replay.json') as fh:
        summary = json.load(fh)
    assert summary['node_exit_codes'] == {'perception': 0, 'planner': 0, 'action': 0, 'recorder': 0}
    frames = load_frames(out / 'bag')
    source_stamps = {int(m.header.stamp.sec) * 10**9 + int(m.header.stamp.nanosec)
                     for topic, _, _, m in read_bag(source_bag) if topic.endswith('/compressed')}
    perceived = {s for s, f in frames.items() if 'kept' in f}
    # newest-only perception on a loaded 2-core box may supersede most of the 10 Hz frames
    assert perceived <= source_stamps and len(perceived) >= 2
    assert all(len(frames[s]['kept']) == 32 for s in perceived)
    assert any('subtask' in f for f in frames.values())
