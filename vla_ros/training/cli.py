"""`vla_train`: expert demos -> joint encoder + action-head training -> DAgger -> held-out evaluation.

    vla_train --episodes 800 --epochs 30 --dagger-rounds 1 --out-dir checkpoints

Stages (each with a progress bar):
  1. expert demos   scripted expert (DART noise on the executed targets, clean labels), one episode
                    per job on --workers spawned processes (own MuJoCo env + EGL context each);
  2. train          SigLIP vision tower (from scratch, augmented frames) + flow-matching head, jointly;
  3. DAgger         the policy drives the sim closed loop (perception pipeline + lightweight planner +
                    ControlLoop, as in the ROS stack); the expert labels every state it perceived;
                    the data are aggregated and training continues (--dagger-rounds times);
  4. evaluate       closed loop without ROS on --eval-episodes seeds from --eval-seed (never trained on).

Writes <out-dir>/vision_encoder/ (save_pretrained: what perception.encoder_path loads),
<out-dir>/action_head.pt (action.checkpoint_path) and <out-dir>/train_metrics.json. `--eval-only` evaluates
--init-from (else --out-dir) into <out-dir>/eval_metrics.json, e.g. with `--rollout-observation-delay-s 0.25`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Iterable, List, Optional

import numpy as np


def _resolve_device(name: str) -> str:
    import torch

    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return name


def save_policy(policy, out_dir: str) -> dict:
    from vla_ros.training.policy import save_encoder

    enc_dir = os.path.join(out_dir, 'vision_encoder')
    if os.path.isdir(enc_dir):
        shutil.rmtree(enc_dir)
    save_encoder(policy.encoder.cpu(), enc_dir)
    head_path = os.path.join(out_dir, 'action_head.pt')
    policy.head.cpu().save(head_path)
    size = sum(os.path.getsize(os.path.join(enc_dir, f)) for f in os.listdir(enc_dir)) + os.path.getsize(head_path)
    return {'encoder_dir': enc_dir, 'head_path': head_path, 'bytes': size}


def policy_jobs(seeds: Iterable[int], model_dir: str, *, record: bool = False, observation_delay_s: float = 0.0,
                plan_cache: bool = False, perception: Optional[dict] = None, inference_delay_s: float = 0.0,
                smoothing: str = '') -> List[dict]:
    """One `rollouts.policy_episode` job per seed (closed-loop evaluation, or a DAgger round with `record`)."""
    return [{'seed': int(s), 'model_dir': model_dir, 'record': record, 'delay': observation_delay_s,
             'plan_cache': plan_cache, 'perception': dict(perception or {}), 'inference_delay': inference_delay_s,
             'smoothing': smoothing} for s in seeds]


def evaluate_checkpoint(model_dir: str, seeds: List[int], workers: int, timeout_s: float,
                        progress: bool = True, desc: str = 'closed-loop eval', task: str = 'touch',
                        observation_delay_s: float = 0.0, plan_cache: bool = False,
                        perception: Optional[dict] = None, inference_delay_s: float = 0.0,
                        smoothing: str = '') -> dict:
    """Closed-loop success (no ROS) of a saved checkpoint on `seeds`, with a Wilson 95% interval."""
    from vla_ros.training.rollouts import policy_episode, run_jobs
    from vla_ros.eval.stats import wilson_interval

    jobs = policy_jobs(seeds, model_dir, observation_delay_s=observation_delay_s, plan_cache=plan_cache,
                       perception=perception, inference_delay_s=inference_delay_s, smoothing=smoothing)
    results = run_jobs(policy_episode, jobs, workers, timeout_s, desc=desc, progress=progress, task=task)
    wins = sum(r['success'] for r in results)
    lo, hi = wilson_interval(wins, len(results))
    times = [r['elapsed_s'] for r in results if r['success']]
    return {'episodes': len(results), 'successes': wins, 'success_rate': wins / max(1, len(results)),
            'observation_delay_s': observation_delay_s, 'inference_delay_s': inference_delay_s,
            'smoothing': smoothing or 'preset', 'plan_cache': plan_cache,
            'perception': dict(perception or {}),
            'wilson95': [round(lo, 4), round(hi, 4)],
            'mean_time_to_success_s': float(np.mean(times)) if times else None,
            'per_episode': [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                            for r in results]}


def run(cfg) -> dict:
    import torch

    from vla_ros.training.rollouts import expert_episode, policy_episode, run_jobs
    from vla_ros.training.trainer import EpisodeData, Policy, train_policy

    device = _resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.work_dir, exist_ok=True)
    os.makedirs(cfg.out_dir, exist_ok=True)
    grid = (cfg.image_size // cfg.patch_size,) * 2
    report = {'config': cfg.to_dict(), 'device': device,
              'torch_device_name': torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}
    t0 = time.perf_counter()
    if cfg.eval_only:
        return _evaluate(cfg, os.path.abspath(cfg.init_from or cfg.out_dir), report, t0)

    jobs = [{'seed': cfg.seed + i, 'noise': cfg.noise_levels[i % len(cfg.noise_levels)], 'grid': grid,
             'hold_steps': cfg.hold_steps, 'max_steps': cfg.max_steps, 'stride': cfg.decision_stride}
            for i in range(cfg.episodes)]
    demos = run_jobs(expert_episode, jobs, cfg.workers, cfg.episode_timeout_s, desc='expert demos',
                     progress=cfg.progress, task=cfg.task)
    report['expert'] = {'episodes': len(demos), 'successes': int(sum(d['success'] for d in demos)),
                        'samples': int(sum(len(d['proprio']) for d in demos)),
                        'seconds': round(time.perf_counter() - t0, 1)}
    print(json.dumps({'expert': report['expert']}), flush=True)
    data = EpisodeData(device)
    data.add(demos)
    del demos
    sample = data.tensors
    policy = Policy(cfg, action_dim=int(sample['actions'].shape[-1]), horizon=int(sample['actions'].shape[1]),
                    proprio_dim=int(sample['proprio'].shape[-1]))
    if policy.head_statistics_needed:
        policy.head.set_normalization(*data.statistics())
    if policy.transfer:
        report['transfer'] = {'from': cfg.init_from, **policy.transfer}
        print(f'[vla_train] warm start from {cfg.init_from} (another action/proprio size): encoder and '
              f'{len(policy.transfer["copied"])} head tensors copied, fresh: {", ".join(policy.transfer["fresh"])}',
              flush=True)

    def checkpoint() -> None:
        saved = save_policy(policy, cfg.out_dir)
        print(f'[vla_train] checkpoint saved to {saved["encoder_dir"]} + {saved["head_path"]}', flush=True)

    report['train'] = [] if cfg.epochs == 0 else [
        train_policy(policy, data, cfg, cfg.epochs, desc='train (expert data)', seed=cfg.seed,
                     budget_s=cfg.train_budget_s, on_checkpoint=checkpoint)]
    if report['train']:
        print(json.dumps({'train': {k: v for k, v in report['train'][-1].items() if k != 'epoch_losses'}}), flush=True)

    report['dagger'] = []
    perception = cfg.perception_overrides()
    for r in range(cfg.dagger_rounds):
        if cfg.time_budget_s > 0 and time.perf_counter() - t0 > cfg.time_budget_s:
            print(f'[vla_train] time budget {cfg.time_budget_s:.0f} s spent: skipping DAgger rounds {r + 1}..',
                  flush=True)
            break
        round_dir = os.path.join(cfg.work_dir, f'round{r}')
        save_policy(policy, round_dir)
        policy.to(device)
        first = cfg.dagger_seed + r * cfg.dagger_episodes
        jobs = policy_jobs(range(first, first + cfg.dagger_episodes), os.path.abspath(round_dir), record=True,
                           observation_delay_s=cfg.rollout_observation_delay_s, plan_cache=cfg.rollout_plan_cache,
                           perception=perception, inference_delay_s=cfg.rollout_inference_delay_s,
                           smoothing=cfg.rollout_smoothing)
        t1 = time.perf_counter()
        rollouts = run_jobs(policy_episode, jobs, cfg.workers, cfg.episode_timeout_s, desc=f'DAgger round {r + 1}',
                            progress=cfg.progress, task=cfg.task)
        stats = {'round': r + 1, 'episodes': len(rollouts), 'policy_successes': int(sum(x['success'] for x in rollouts)),
                 'samples': int(sum(len(x.get('proprio', [])) for x in rollouts)),
                 'rollout_seconds': round(time.perf_counter() - t1, 1)}
        data.add([x for x in rollouts if 'proprio' in x])
        del rollouts
        stats['train'] = train_policy(policy, data, cfg, cfg.dagger_epochs, desc=f'train (DAgger {r + 1})',
                                      lr=cfg.dagger_lr or None, seed=cfg.seed + r + 1,
                                      budget_s=cfg.dagger_train_budget_s, on_checkpoint=checkpoint)
        report['dagger'].append(stats)
        print(json.dumps({'dagger': {k: v for k, v in stats.items() if k != 'train'}}), flush=True)

    report['checkpoint'] = save_policy(policy, cfg.out_dir)
    report['train_seconds_total'] = round(time.perf_counter() - t0, 1)
    _write_metrics(cfg, report)          # already there if the evaluation is cut short
    return _evaluate(cfg, os.path.abspath(cfg.out_dir), report, t0)


def _evaluate(cfg, model_dir: str, report: dict, t0: float) -> dict:
    """Held-out closed-loop evaluation of `model_dir` into the report (out_dir/train_metrics.json, or
    eval_metrics.json with --eval-only)."""
    if cfg.eval_episodes > 0:
        seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
        report['eval'] = evaluate_checkpoint(model_dir, seeds, cfg.workers, cfg.episode_timeout_s,
                                             progress=cfg.progress, task=cfg.task,
                                             observation_delay_s=cfg.rollout_observation_delay_s,
                                             plan_cache=cfg.rollout_plan_cache,
                                             perception=cfg.perception_overrides(),
                                             inference_delay_s=cfg.rollout_inference_delay_s,
                                             smoothing=cfg.rollout_smoothing)
        report['eval']['model_dir'] = model_dir
        summary = {k: v for k, v in report['eval'].items() if k != 'per_episode'}
        print(json.dumps({'eval': summary}), flush=True)
    report['total_seconds'] = round(time.perf_counter() - t0, 1)
    _write_metrics(cfg, report)
    return report


def _write_metrics(cfg, report: dict) -> None:
    name = 'eval_metrics.json' if cfg.eval_only else 'train_metrics.json'   # never overwrite a training report
    with open(os.path.join(cfg.out_dir, name), 'w') as fh:
        json.dump(report, fh, indent=1, default=float)


def main(argv: Optional[List[str]] = None) -> int:
    from vla_ros.training.config import config_from_args

    cfg = config_from_args(argv, description=__doc__.splitlines()[0])
    run(cfg)
    return 0


if __name__ == '__main__':
    sys.exit(main())
