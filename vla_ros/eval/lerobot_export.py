"""Recorded bags -> a LeRobotDataset in the v3.0 layout (`vla_export_lerobot BAG [BAG...] --out DIR`).

Written directly with pyarrow/pandas: the `lerobot` wheel pins a CUDA torch and the standalone
`lerobot-dataset` wheel pins huggingface-hub<0.36 (transformers 5 here needs >=1.0), so neither
installs cleanly beside this stack. The layout is what LeRobot's v3.0 loader reads:

    meta/info.json                              codebase_version v3.0, fps, features, paths
    meta/stats.json                             per-feature min/max/mean/std/count
    meta/tasks.parquet                          index = task text, column task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode: length, tasks, frame range
    data/chunk-000/file-000.parquet             one row per frame

One frame per recorded camera image: `observation.images.camera` (PNG, HxWx3 uint8),
`observation.state` (joint positions [rad] in action.joint_names order), `action` (the joint
position command in force right after the frame: the first JointTrajectory / Float64MultiArray
command logged after the image, else the next frame's joint positions), plus LeRobot's
timestamp, frame_index, episode_index, index and task_index. Episodes follow TaskStatus.episode
(and instruction changes); the task is the episode's instruction.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from vla_ros.eval.bag_io import bag_summary, read_bag
from vla_ros.eval.replay_inputs import find_inputs, iter_frames

CODEBASE_VERSION = 'v3.0'
CHUNKS_SIZE = 1000
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
EPISODES_PATH = 'meta/episodes/chunk-000/file-000.parquet'
IMAGE_KEY = 'observation.images.camera'
STATE_KEY = 'observation.state'
ACTION_KEY = 'action'
TYPE_TRAJECTORY = 'trajectory_msgs/msg/JointTrajectory'
TYPE_COMMAND = 'std_msgs/msg/Float64MultiArray'


def _commands(bag) -> List[tuple]:
    """(log_ns, positions) of the command stream, trajectory messages preferred."""
    topics = bag_summary(bag)['topics']
    for msgtype in (TYPE_TRAJECTORY, TYPE_COMMAND):
        names = [n for n, info in topics.items() if info['type'] == msgtype]
        if names:
            out = []
            for _, _, log_ns, msg in read_bag(bag, topics=names[:1]):
                values = msg.points[0].positions if msgtype == TYPE_TRAJECTORY and len(msg.points) else \
                    (msg.data if msgtype == TYPE_COMMAND else None)
                if values is not None and len(values):
                    out.append((log_ns, np.asarray(values, np.float32)))
            return out
    return []


def bag_episodes(bag, joint_names: Sequence[str], progress: bool = False) -> List[dict]:
    """[{task, images [T,H,W,3], state [T,J], action [T,J], stamps_ns [T]}] for one bag."""
    commands = _commands(bag)
    command_times = np.array([t for t, _ in commands], dtype=np.int64)
    episodes: List[dict] = []
    current, key = None, None
    for frame in iter_frames(bag, find_inputs(bag), progress=progress):
        if frame.joint_positions is None:
            continue
        index = {n: i for i, n in enumerate(frame.joint_names)}
        if any(n not in index for n in joint_names):
            continue
        state = frame.joint_positions[[index[n] for n in joint_names]].astype(np.float32)
        after = int(np.searchsorted(command_times, frame.log_ns, side='right'))
        command = commands[after][1] if after < len(commands) and commands[after][1].size == len(joint_names) \
            else None
        if (frame.episode, frame.instruction) != key:
            key = (frame.episode, frame.instruction)
            current = {'task': frame.instruction, 'images': [], 'state': [], 'action': [], 'stamps_ns': []}
            episodes.append(current)
        current['images'].append(frame.rgb)
        current['state'].append(state)
        current['action'].append(command)
        current['stamps_ns'].append(frame.stamp_ns)
    for ep in episodes:  # without a command, the next measured position is the action
        for t, act in enumerate(ep['action']):
            if act is None:
                ep['action'][t] = ep['state'][min(t + 1, len(ep['state']) - 1)]
        ep['images'] = np.stack(ep['images'])
        for k in ('state', 'action'):
            ep[k] = np.stack(ep[k]).astype(np.float32)
        ep['stamps_ns'] = np.asarray(ep['stamps_ns'], np.int64)
    return episodes


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format='PNG')
    return buf.getvalue()


def _stats(values: np.ndarray) -> Dict[str, list]:
    return {'min': values.min(0).tolist(), 'max': values.max(0).tolist(), 'mean': values.mean(0).tolist(),
            'std': values.std(0).tolist(), 'count': [int(values.shape[0])]}


def _image_stats(images: np.ndarray) -> Dict[str, list]:
    """Per channel, [C,1,1], pixel values scaled to [0, 1] as LeRobot computes them."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    per = _stats(pixels)
    return {k: ([[[v]] for v in val] if k != 'count' else [int(images.shape[0])]) for k, val in per.items()}


def estimate_fps(episodes: List[dict]) -> int:
    periods = np.concatenate([np.diff(ep['stamps_ns']) for ep in episodes if len(ep['stamps_ns']) > 1] or [[]])
    return max(1, int(round(1e9 / float(np.median(periods))))) if periods.size else 10


def write_lerobot_dataset(episodes: List[dict], out_dir, joint_names: Sequence[str], fps: Optional[int] = None,
                          robot_type: str = 'franka_panda_sim') -> dict:
    """Write `episodes` (see bag_episodes) as a LeRobot v3.0 dataset; returns info.json's content."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    if not episodes:
        raise ValueError('no episodes with camera frames and joint states to export')
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f'{root} exists and is not empty')
    fps = int(fps or estimate_fps(episodes))
    tasks = list(dict.fromkeys(ep['task'] for ep in episodes))
    h, w, c = episodes[0]['images'].shape[1:]
    names = list(joint_names)
    columns: Dict[str, list] = {k: [] for k in (IMAGE_KEY, STATE_KEY, ACTION_KEY, 'timestamp', 'frame_index',
                                                 'episode_index', 'index', 'task_index')}
    episode_rows = []
    start = 0
    for e, ep in enumerate(episodes):
        n = len(ep['state'])
        if ep['images'].shape[1:] != (h, w, c):
            raise ValueError(f'episode {e}: image size {ep["images"].shape[1:]} differs from {(h, w, c)}')
        columns[IMAGE_KEY] += [{'bytes': _png(img), 'path': None} for img in ep['images']]
        columns[STATE_KEY] += [row.tolist() for row in ep['state']]
        columns[ACTION_KEY] += [row.tolist() for row in ep['action']]
        columns['timestamp'] += [np.float32(i / fps) for i in range(n)]
        columns['frame_index'] += list(range(n))
        columns['episode_index'] += [e] * n
        columns['index'] += list(range(start, start + n))
        columns['task_index'] += [tasks.index(ep['task'])] * n
        episode_rows.append({'episode_index': e, 'tasks': [ep['task']], 'length': n, 'data/chunk_index': 0,
                             'data/file_index': 0, 'dataset_from_index': start, 'dataset_to_index': start + n,
                             'meta/episodes/chunk_index': 0, 'meta/episodes/file_index': 0})
        start += n
    vec = lambda: pa.list_(pa.float32(), len(names))  # noqa: E731
    schema = pa.schema([(IMAGE_KEY, pa.struct([('bytes', pa.binary()), ('path', pa.string())])),
                        (STATE_KEY, vec()), (ACTION_KEY, vec()), ('timestamp', pa.float32()),
                        ('frame_index', pa.int64()), ('episode_index', pa.int64()), ('index', pa.int64()),
                        ('task_index', pa.int64())])
    data_file = root / DATA_PATH.format(chunk_index=0, file_index=0)
    data_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), data_file)
    (root / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(episode_rows).to_parquet(root / EPISODES_PATH)
    pd.DataFrame({'task_index': range(len(tasks))}, index=pd.Index(tasks, name='task')).to_parquet(
        root / 'meta' / 'tasks.parquet')

    scalar = lambda dtype: {'dtype': dtype, 'shape': [1], 'names': None}  # noqa: E731
    features = {
        IMAGE_KEY: {'dtype': 'image', 'shape': [int(h), int(w), int(c)], 'names': ['height', 'width', 'channels']},
        STATE_KEY: {'dtype': 'float32', 'shape': [len(names)], 'names': names},
        ACTION_KEY: {'dtype': 'float32', 'shape': [len(names)], 'names': names},
        'timestamp': scalar('float32'), 'frame_index': scalar('int64'), 'episode_index': scalar('int64'),
        'index': scalar('int64'), 'task_index': scalar('int64'),
    }
    info = {'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type, 'total_episodes': len(episodes),
            'total_frames': start, 'total_tasks': len(tasks), 'chunks_size': CHUNKS_SIZE,
            'data_files_size_in_mb': 100, 'video_files_size_in_mb': 200, 'fps': fps,
            'splits': {'train': f'0:{len(episodes)}'}, 'data_path': DATA_PATH, 'video_path': None,
            'features': features}
    (root / 'meta' / 'info.json').write_text(json.dumps(info, indent=2))
    state, action = np.asarray(columns[STATE_KEY]), np.asarray(columns[ACTION_KEY])
    all_images = np.concatenate([ep['images'] for ep in episodes])
    stats = {STATE_KEY: _stats(state), ACTION_KEY: _stats(action), IMAGE_KEY: _image_stats(all_images)}
    for key in ('timestamp', 'frame_index', 'episode_index', 'index', 'task_index'):
        stats[key] = _stats(np.asarray(columns[key], np.float64)[:, None])
    (root / 'meta' / 'stats.json').write_text(json.dumps(stats, indent=2))
    return info


def main(argv: Optional[List[str]] = None) -> int:
    from vla_ros.config.action import ActionConfig
    parser = argparse.ArgumentParser(prog='vla_export_lerobot', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bags', nargs='+', help='bags recorded with recorder.record_images:=true')
    parser.add_argument('--out', required=True, help='new dataset directory')
    parser.add_argument('--fps', type=int, default=None, help='dataset fps (default: from the image stamps)')
    parser.add_argument('--joint-names', nargs='+', default=None,
                        help='state/action joints in order (default: action.joint_names)')
    args = parser.parse_args(argv)
    joint_names = args.joint_names or ActionConfig().joint_names
    episodes = [ep for bag in args.bags for ep in bag_episodes(bag, joint_names, progress=True)]
    info = write_lerobot_dataset(episodes, args.out, joint_names, fps=args.fps)
    print(f'{args.out}: {info["total_episodes"]} episodes, {info["total_frames"]} frames at {info["fps"]} fps, '
          f'{info["total_tasks"]} tasks')
    return 0


if __name__ == '__main__':
    sys.exit(main())
