"""Train the action head from a LeRobotDataset (v3.0 layout, e.g. written by vla_export_lerobot).

    python -m vla_ros.action.lerobot_data runs/lerobot_ds --out runs/head.pt --epochs 50

Each episode's frames go through the real perception pipeline and planner in time order (as
vla_ros.sim.demos.featurize_episode does for simulator demos); the label of frame t is the chunk of
the next `horizon` dataset actions (absolute joint targets [rad], the last one repeated at the
episode end). Reads the parquet files with pandas/pyarrow, as LeRobot's loader does.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import List, Optional

import numpy as np

IMAGE_KEY = 'observation.images.camera'
STATE_KEY = 'observation.state'
ACTION_KEY = 'action'


def action_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """[T, A] per-frame actions -> [T, horizon, A], step k of row t = action t+k (end padded)."""
    idx = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon)[None, :], len(actions) - 1)
    return actions[idx].astype(np.float32)


def read_lerobot_episodes(root, horizon: int, image_key: str = IMAGE_KEY) -> List[object]:
    """LeRobot v3.0 dataset -> vla_ros.sim.demos.Episode list (images, proprio, action chunks, task)."""
    import pandas as pd
    from PIL import Image

    from vla_ros.sim.demos import Episode
    root = Path(root)
    info = json.loads((root / 'meta' / 'info.json').read_text())
    if not str(info.get('codebase_version', '')).startswith('v3'):
        raise ValueError(f'{root}: codebase_version {info.get("codebase_version")!r}, expected v3.x')
    if info['features'].get(image_key, {}).get('dtype') != 'image':
        raise ValueError(f'{root}: no image feature {image_key!r} stored in the data files (videos not supported)')
    tasks = pd.read_parquet(root / 'meta' / 'tasks.parquet')
    task_text = {int(row.task_index): str(name) for name, row in tasks.iterrows()}
    data = pd.concat([pd.read_parquet(p) for p in sorted((root / 'data').glob('*/*.parquet'))], ignore_index=True)
    episodes = []
    for ep_index, rows in data.sort_values('index').groupby('episode_index', sort=True):
        rows = rows.sort_values('frame_index')
        images = np.stack([np.asarray(Image.open(io.BytesIO(cell['bytes'])).convert('RGB')) for cell in rows[image_key]])
        state = np.stack(rows[STATE_KEY].to_numpy()).astype(np.float32)
        actions = np.stack(rows[ACTION_KEY].to_numpy()).astype(np.float32)
        episodes.append(Episode(seed=int(ep_index), instruction=task_text[int(rows['task_index'].iloc[0])],
                                images=images, proprio=state, chunks=action_chunks(actions, horizon),
                                success=False))
    return episodes


def main(argv: Optional[List[str]] = None) -> int:
    from vla_ros.action.train import config_for_dataset, train_action_head
    from vla_ros.config.perception import PerceptionConfig
    from vla_ros.config.planning import PlannerConfig
    from vla_ros.resources import resolve_path
    from vla_ros.perception.encoder import VisionEncoder
    from vla_ros.perception.pipeline import PerceptionPipeline
    from vla_ros.planning.base import make_planner
    from vla_ros.sim.demos import featurize_episode
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dataset', help='LeRobotDataset v3.0 root directory')
    ap.add_argument('--out', required=True, help='checkpoint path (.pt)')
    ap.add_argument('--horizon', type=int, default=16)
    ap.add_argument('--epochs', type=int, default=50)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--encoder-path', default='')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)
    encoder = VisionEncoder.from_pretrained(resolve_path(args.encoder_path or PerceptionConfig().encoder_path,
                                                         'perception.encoder_path', kind='dir', marker='config.json'))
    pipeline = PerceptionPipeline(encoder, PerceptionConfig())
    planner = make_planner(PlannerConfig(), encoder.hidden_size)
    samples = []
    for episode in read_lerobot_episodes(args.dataset, args.horizon):
        samples += featurize_episode(episode, pipeline, planner)
    metrics = train_action_head(samples, config_for_dataset(samples), epochs=args.epochs,
                                batch_size=args.batch_size, out_path=args.out, seed=args.seed)
    metrics.pop('head')
    print(json.dumps({k: v for k, v in metrics.items() if k != 'epoch_losses'}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
