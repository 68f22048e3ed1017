"""Bag -> LeRobotDataset v3.0 -> back (values equal) -> action head trained from it."""
import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')
pd = pytest.importorskip('pandas')
pytest.importorskip('pyarrow')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_bag import record_sim_bag  # noqa: E402

from vla_ros.action.lerobot_data import action_chunks, main as train_main, read_lerobot_episodes  # noqa: E402
from vla_ros.eval.lerobot_export import main as export_main  # noqa: E402

JOINTS = [f'joint{i}' for i in range(1, 8)]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp('lerobot')
    truth = record_sim_bag(root / 'bag', episodes=2, frames_per_episode=5, image_format='png')
    assert export_main([str(root / 'bag'), '--out', str(root / 'ds')]) == 0
    return root / 'ds', truth


def test_layout_matches_lerobot_v3(exported):
    ds, truth = exported
    info = json.loads((ds / 'meta' / 'info.json').read_text())
    assert info['codebase_version'] == 'v3.0' and info['fps'] == 10
    assert (info['total_episodes'], info['total_frames'], info['total_tasks']) == (2, 10, len({
        t for t in pd.read_parquet(ds / 'meta' / 'tasks.parquet').index}))
    data = pd.read_parquet(ds / info['data_path'].format(chunk_index=0, file_index=0))
    assert set(info['features']) == set(data.columns)
    assert info['features']['observation.images.camera']['shape'] == [128, 128, 3]
    assert list(data['index']) == list(range(10)) and list(data['episode_index']) == [0] * 5 + [1] * 5
    assert list(data['frame_index']) == list(range(5)) * 2
    np.testing.assert_allclose(data['timestamp'][:5], np.arange(5) / 10, atol=1e-6)
    episodes = pd.read_parquet(ds / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet')
    assert list(episodes['dataset_from_index']) == [0, 5] and list(episodes['dataset_to_index']) == [5, 10]
    assert list(episodes['length']) == [5, 5]
    tasks = pd.read_parquet(ds / 'meta' / 'tasks.parquet')
    assert [tasks.iloc[i].name for i in data['task_index'][[0, 5]]] == [t[0] for t in episodes['tasks']]
    stats = json.loads((ds / 'meta' / 'stats.json').read_text())
    assert np.asarray(stats['observation.images.camera']['mean']).shape == (3, 1, 1)
    assert stats['action']['count'] == [10]


def test_values_round_trip(exported):
    ds, truth = exported
    episodes = read_lerobot_episodes(ds, horizon=4)
    assert len(episodes) == 2
    for ep, rows in zip(episodes, truth):
        np.testing.assert_allclose(ep.proprio, np.stack([q for q, _, _ in rows]), atol=1e-6)
        np.testing.assert_allclose(ep.chunks[:, 0], np.stack([a for _, a, _ in rows]), atol=1e-6)
        np.testing.assert_array_equal(ep.images, np.stack([img for _, _, img in rows]))   # PNG: lossless
    assert ep.chunks.shape == (5, 4, 7)


def test_action_chunks_pad_with_last():
    acts = np.arange(6, dtype=np.float32).reshape(3, 2)
    chunks = action_chunks(acts, 3)
    np.testing.assert_array_equal(chunks[1], [[2, 3], [4, 5], [4, 5]])


def test_action_head_trains_from_the_dataset(exported, tmp_path):
    ds, _ = exported
    out = tmp_path / 'head.pt'
    assert train_main([str(ds), '--out', str(out), '--epochs', '3', '--horizon', '16']) == 0
    from vla_ros.action.flow_head import FlowMatchingActionHead
    head = FlowMatchingActionHead.load(str(out))
    assert (head.config.horizon, head.config.action_dim) == (16, 7)
