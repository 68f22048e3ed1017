#!/usr/bin/env python3
"""Scripted expert demos in the MuJoCo sim -> real perception + planner features -> action head.

Stages (each with a progress bar):
  1. collect    N expert episodes (seeds seed..seed+N-1) with DART-style noise on the executed targets;
                raw episodes (images, proprio, expert chunks) are kept under --work-dir.
  2. featurize  the REAL perception pipeline (demo SigLIP encoder, pruning, temporal reuse) and the
                lightweight planner over every episode in time order -> dataset.npz.
  2b. pack      every --pack-stride-th sample, tokens in float16 -> dataset_fp16.npz (small enough to
                ship to a GPU machine; `--stages train --device cuda --dataset ...` there).
  3. train      `vla_ros.action.train.train_action_head` -> --out (checkpoints/action_head.pt).
  4. evaluate   closed loop without ROS (env + perception + planner + head + ControlLoop chunking and
                safety) on --eval-episodes unseen seeds; success rate written to checkpoints/README.md.

The vision encoder is `make_demo_vision_encoder(<work-dir>/vision_encoder, seed=0)`, the same one
the bringup creates, so the checkpoint matches the closed loop's features.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import vla_ros.sim  # noqa: E402,F401  (headless GL backend before mujoco)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--episodes', type=int, default=600, help='expert episodes to collect')
    ap.add_argument('--seed', type=int, default=0, help='first episode seed; also the training seed')
    ap.add_argument('--noise-levels', default='0,0.01,0.02,0.03',
                    help='comma list of executed-target noise std (rad); episode i uses level i %% len')
    ap.add_argument('--max-steps', type=int, default=200, help='cap on decisions per collected episode')
    ap.add_argument('--hold-steps', type=int, default=10, help='decisions recorded after success')
    ap.add_argument('--plan-every', type=int, default=10,
                    help='planner call every N decisions while featurizing (2 Hz planner at 20 Hz decisions)')
    ap.add_argument('--epochs', type=int, default=150)
    ap.add_argument('--batch-size', type=int, default=256)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--hidden-dim', type=int, default=128)
    ap.add_argument('--num-layers', type=int, default=2)
    ap.add_argument('--device', default='cpu', help='torch device for training (cpu or cuda)')
    ap.add_argument('--torch-threads', type=int, default=2)
    ap.add_argument('--eval-episodes', type=int, default=20)
    ap.add_argument('--eval-seed', type=int, default=100000, help='first evaluation seed (unseen in training)')
    ap.add_argument('--work-dir', default=os.path.join(ROOT, 'runs', 'collect_and_train'))
    ap.add_argument('--out', default=os.path.join(ROOT, 'checkpoints', 'action_head.pt'))
    ap.add_argument('--readme', default=os.path.join(ROOT, 'checkpoints', 'README.md'))
    ap.add_argument('--dataset', default='',
                    help='dataset file for the train stage (default: <work-dir>/dataset_fp16.npz written by the pack '
                         'stage if it runs, else <work-dir>/dataset.npz)')
    ap.add_argument('--pack-stride', type=int, default=2, help='pack stage keeps every N-th sample')
    ap.add_argument('--stages', default='collect,featurize,pack,train,eval',
                    help='comma list of stages: collect, featurize, pack, train, eval (later stages reuse '
                         'earlier outputs in --work-dir)')
    return ap.parse_args(argv)


def stage_collect(args, sim_cfg, action_cfg):
    from tqdm import tqdm

    from vla_ros.sim.arm_env import ArmEnv
    from vla_ros.sim.demos import collect_episode
    from vla_ros.sim.expert import ExpertConfig, TouchExpert

    out_dir = os.path.join(args.work_dir, 'episodes')
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, 'ep_*.npz')):
        os.remove(stale)
    noise_levels = [float(x) for x in args.noise_levels.split(',') if x.strip()]
    env = ArmEnv(sim_cfg, seed=args.seed)
    expert = TouchExpert(env, ExpertConfig(action_dt=action_cfg.action_dt, horizon=action_cfg.horizon))
    # Collection never needs the full episode timeout: a capped episode still has clean labels.
    env.config.episode_timeout_s = min(sim_cfg.episode_timeout_s, args.max_steps * action_cfg.action_dt)
    stats = {'episodes': 0, 'successes': 0, 'samples': 0}
    bar = tqdm(range(args.episodes), desc='collect expert demos', unit='ep')
    for i in bar:
        seed = args.seed + i
        noise = noise_levels[i % len(noise_levels)]
        ep = collect_episode(env, expert, seed, noise_std=noise, hold_steps=args.hold_steps,
                             rng=np.random.default_rng(seed + 7919))
        np.savez_compressed(os.path.join(out_dir, f'ep_{i:05d}.npz'), noise_std=np.array(noise), **ep.to_arrays())
        stats['episodes'] += 1
        stats['successes'] += int(ep.success)
        stats['samples'] += len(ep.proprio)
        bar.set_postfix(success=f"{stats['successes']}/{stats['episodes']}", samples=stats['samples'])
    env.close()
    stats['expert_success_rate'] = stats['successes'] / max(1, stats['episodes'])
    return stats


def load_perception(args):
    from vla_ros.config import PerceptionConfig, PlannerConfig
    from vla_ros.models.make_demo_models import VISION_ENCODER_SEED
    from vla_ros.models.vision import make_demo_vision_encoder
    from vla_ros.perception.encoder import VisionEncoder
    from vla_ros.perception.pipeline import PerceptionPipeline
    from vla_ros.planning.base import make_planner

    # Built fresh (deterministic from the seed) rather than reusing a possibly stale models/ copy;
    # the bringup builds the identical encoder with make_demo_models.ensure_vision_encoder.
    encoder_dir = os.path.join(args.work_dir, 'vision_encoder')
    make_demo_vision_encoder(encoder_dir, seed=VISION_ENCODER_SEED)
    encoder = VisionEncoder.from_pretrained(encoder_dir)
    pipeline = PerceptionPipeline(encoder, PerceptionConfig())
    planner = make_planner(PlannerConfig(), encoder.hidden_size)
    return encoder_dir, pipeline, planner


def stage_featurize(args):
    from tqdm import tqdm

    from vla_ros.action.train import save_dataset
    from vla_ros.sim.demos import Episode, featurize_episode

    encoder_dir, pipeline, planner = load_perception(args)
    files = sorted(glob.glob(os.path.join(args.work_dir, 'episodes', 'ep_*.npz')))
    if not files:
        raise SystemExit(f'no episodes under {args.work_dir}/episodes: run the collect stage first')
    samples = []
    for path in tqdm(files, desc='perception + planner features', unit='ep'):
        with np.load(path) as data:
            ep = Episode.from_arrays(data)
        samples.extend(featurize_episode(ep, pipeline, planner, plan_every=args.plan_every))
    path = os.path.join(args.work_dir, 'dataset.npz')
    save_dataset(path, samples)
    return {'dataset': path, 'samples': len(samples), 'encoder_dir': encoder_dir,
            'vis_tokens_per_sample': int(np.mean([s['vis_tokens'].shape[0] for s in samples])),
            'vis_dim': int(samples[0]['vis_tokens'].shape[1]), 'plan_tokens': list(samples[0]['plan_tokens'].shape)}


def stage_pack(args):
    """Every --pack-stride-th sample, tokens as float16 (joint data stays float32), same format.

    Neighbouring 0.05 s decisions are nearly identical, so striding keeps the scene coverage of
    all episodes at a fraction of the size (the file must travel to a GPU machine).
    """
    from vla_ros.action.train import load_dataset, save_dataset

    src, dst = os.path.join(args.work_dir, 'dataset.npz'), os.path.join(args.work_dir, 'dataset_fp16.npz')
    samples = load_dataset(src)[::args.pack_stride]
    save_dataset(dst, samples)  # float32, then shrink the token arrays
    with np.load(dst) as data:
        blob = {k: (data[k].astype(np.float16) if k in ('vis_tokens', 'plan_tokens') else data[k])
                for k in data.files}
    with open(dst, 'wb') as fh:
        np.savez_compressed(fh, **blob)
    return {'packed': dst, 'bytes': os.path.getsize(dst), 'samples': len(samples), 'stride': args.pack_stride}


def stage_train(args, action_cfg):
    from vla_ros.action.train import config_for_dataset, load_dataset, train_action_head

    default = 'dataset_fp16.npz' if 'pack' in args.stages else 'dataset.npz'
    data = load_dataset(args.dataset or os.path.join(args.work_dir, default))
    cfg = config_for_dataset(data, hidden_dim=args.hidden_dim, num_layers=args.num_layers,
                             denoising_steps=action_cfg.denoising_steps)
    metrics = train_action_head(data, cfg, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                device=args.device, out_path=args.out, seed=args.seed)
    metrics.pop('head')
    losses = metrics.pop('epoch_losses')
    metrics['first_epoch_loss'] = losses[0]
    metrics['loss_curve_every_5'] = [round(x, 4) for x in losses[::5]]
    metrics['checkpoint_bytes'] = os.path.getsize(args.out)
    metrics['head_config'] = cfg.__dict__
    return metrics


def stage_eval(args, sim_cfg, action_cfg):
    import torch
    from tqdm import tqdm

    from vla_ros.action.flow_head import FlowMatchingActionHead
    from vla_ros.sim.arm_env import ArmEnv
    from vla_ros.sim.demos import evaluate_policy

    _, pipeline, planner = load_perception(args)
    head = FlowMatchingActionHead.load(args.out).eval()
    env = ArmEnv(sim_cfg, seed=args.eval_seed)
    seeds = list(range(args.eval_seed, args.eval_seed + args.eval_episodes))
    bar = tqdm(total=len(seeds), desc='closed-loop eval', unit='ep')

    def progress(res):
        bar.update(1)
        bar.set_postfix(success=f'{sum(res.successes)}/{len(res.successes)}')

    with torch.no_grad():
        result = evaluate_policy(env, pipeline, planner, head, action_cfg, seeds, progress=progress)
    bar.close()
    env.close()
    return result.summary()


def write_readme(args, report):
    cmd = ('.venv/bin/python scripts/collect_and_train.py '
           f'--stages {args.stages} --episodes {args.episodes} --seed {args.seed} '
           f'--noise-levels {args.noise_levels} --max-steps {args.max_steps} --hold-steps {args.hold_steps} '
           f'--plan-every {args.plan_every} --pack-stride {args.pack_stride} '
           + (f'--dataset {os.path.relpath(args.dataset, ROOT)} ' if args.dataset else '')
           + f'--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} '
           f'--hidden-dim {args.hidden_dim} --num-layers {args.num_layers} --device {args.device} '
           f'--eval-episodes {args.eval_episodes} --eval-seed {args.eval_seed}')
    ev = report.get('eval', {})
    tr = report.get('train', {})
    lines = [
        '# Trained checkpoints',
        '',
        '`action_head.pt`: flow-matching action head (`vla_ros.action.flow_head`) trained by',
        '`scripts/collect_and_train.py` on scripted-expert demonstrations in the MuJoCo Panda tabletop',
        'sim ("touch the <colour> cube"), conditioned on the REAL perception tokens of the demo vision',
        'encoder (`make_demo_vision_encoder(dir, seed=0)`, default sizes, as the bringup builds it; default',
        '`PerceptionConfig`) and the lightweight planner\'s plan tokens (default `PlannerConfig`).',
        'Changing the encoder seed/sizes, the perception defaults or the planner invalidates it: retrain.',
        '',
        '## Reproduce',
        '',
        '```bash',
        'cd <repo root>',
        cmd,
        '```',
        '',
        f'Raw episodes and the featurized dataset go to `{os.path.relpath(args.work_dir, ROOT)}/` (not committed).',
        '',
        '## Data',
        '',
        f"- expert episodes: {report.get('collect', {}).get('episodes', 'n/a')} (seeds {args.seed}.."
        f"{args.seed + args.episodes - 1}), expert success {report.get('collect', {}).get('expert_success_rate', 'n/a')}",
        f"- executed-target noise levels (rad, DART-style, labels clean): {args.noise_levels}",
        f"- training samples: {report.get('featurize', {}).get('samples', 'n/a')} "
        f"(one per 0.05 s decision; ~{report.get('featurize', {}).get('vis_tokens_per_sample', '?')} "
        'visual tokens + 8 plan tokens + 7 joint positions -> 16x7 joint targets)',
        '',
        '## Training',
        '',
        f"- epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, device {args.device}, "
        f"hidden {args.hidden_dim}, layers {args.num_layers}",
        f"- flow-matching loss: first epoch {tr.get('first_epoch_loss', float('nan')):.4f}, "
        f"final {tr.get('final_loss', float('nan')):.4f}; train time {tr.get('train_seconds', 0.0):.0f} s",
        f"- checkpoint size: {tr.get('checkpoint_bytes', 0) / 1e6:.2f} MB",
        '',
        '## Closed-loop evaluation (no ROS)',
        '',
        'Env + perception pipeline + planner (2 Hz) + head + `ControlLoop` (chunk buffer with the',
        'default smoothing, safety filter) at 100 Hz control, chunks at 10 Hz, zero inference latency,',
        f'on {ev.get("episodes", 0)} unseen seeds ({args.eval_seed}..{args.eval_seed + args.eval_episodes - 1}):',
        '',
        f"- success rate: **{ev.get('success_rate', float('nan')):.2f}**",
        f"- mean final distance to the target cube's top: {ev.get('mean_final_distance_m', float('nan')):.3f} m",
        f"- mean episode time: {ev.get('mean_elapsed_s', float('nan')):.1f} s (timeout {report.get('episode_timeout_s')} s)",
        '',
        'Full metrics: `action_head_metrics.json`.',
        '',
    ]
    with open(args.readme, 'w') as fh:
        fh.write('\n'.join(lines))


def main(argv=None):
    args = parse_args(argv)
    import torch

    from vla_ros.config import ActionConfig, SimConfig

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    stages = [s.strip() for s in args.stages.split(',') if s.strip()]
    sim_cfg, action_cfg = SimConfig(), ActionConfig()
    metrics_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), 'action_head_metrics.json')
    report = {}
    if os.path.isfile(metrics_path):
        with open(metrics_path) as fh:
            report = json.load(fh)
    report['episode_timeout_s'] = sim_cfg.episode_timeout_s
    report['args'] = vars(args)
    t0 = time.perf_counter()
    if 'collect' in stages:
        report['collect'] = stage_collect(args, SimConfig(), action_cfg)
        print(json.dumps(report['collect']), flush=True)
    if 'featurize' in stages:
        report['featurize'] = stage_featurize(args)
        print(json.dumps(report['featurize']), flush=True)
    if 'pack' in stages:
        report['pack'] = stage_pack(args)
        print(json.dumps(report['pack']), flush=True)
    if 'train' in stages:
        report['train'] = stage_train(args, action_cfg)
        print(json.dumps({k: v for k, v in report['train'].items() if k != 'head_config'}), flush=True)
    if 'eval' in stages:
        report['eval'] = stage_eval(args, sim_cfg, action_cfg)
        print(json.dumps({k: v for k, v in report['eval'].items() if k != 'per_episode'}), flush=True)
    report['total_seconds'] = time.perf_counter() - t0
    report['args'] = {k: (os.path.relpath(v, ROOT) if isinstance(v, str) and v.startswith(ROOT) else v)
                      for k, v in vars(args).items()}
    os.makedirs(os.path.dirname(metrics_path), exist_ok=True)
    with open(metrics_path, 'w') as fh:
        json.dump(report, fh, indent=2, default=float)
    if 'train' in stages or 'eval' in stages:
        write_readme(args, report)


if __name__ == '__main__':
    main()
