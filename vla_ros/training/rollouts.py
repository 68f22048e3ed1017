"""Sim episodes in parallel worker processes: expert demos, DAgger rollouts, closed-loop evaluation.

Each worker owns one MuJoCo env (its own headless GL context: workers are spawned, not forked),
one scripted expert and, for policy episodes, the policy loaded from a checkpoint directory
(`vision_encoder/` + `action_head.pt`) exactly as the ROS nodes load it. Jobs are per episode, so
the result of a seed does not depend on the number of workers.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

_STATE: Dict[str, object] = {}


def make_expert(env, action_cfg):
    """The scripted expert of the env's task, with the action head's chunk timing."""
    if env.task.name == 'pick_place':
        from vla_ros.sim.pick_place_expert import PickPlaceExpert, PickPlaceExpertConfig
        return PickPlaceExpert(env, PickPlaceExpertConfig(action_dt=action_cfg.action_dt, horizon=action_cfg.horizon))
    from vla_ros.sim.expert import ExpertConfig, TouchExpert
    return TouchExpert(env, ExpertConfig(action_dt=action_cfg.action_dt, horizon=action_cfg.horizon))


def _init_worker(episode_timeout_s: float, torch_threads: int = 1, task: str = 'touch') -> None:
    import torch

    import vla_ros.sim  # noqa: F401  (GL backend before mujoco)
    from vla_ros.config import ActionConfig, SimConfig
    from vla_ros.config.tasks import task_config
    from vla_ros.sim.arm_env import ArmEnv

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    sim_cfg = task_config(SimConfig, 'sim', task)
    sim_cfg.episode_timeout_s = episode_timeout_s
    action_cfg = task_config(ActionConfig, 'action', task)
    env = ArmEnv(sim_cfg, seed=0)
    _STATE.update(env=env, action_cfg=action_cfg, timeout=episode_timeout_s, task=task,
                  expert=make_expert(env, action_cfg))


def expert_episode(job: dict) -> dict:
    """One scripted-expert episode with DART noise -> arrays (images, proprio, chunks, relevance)."""
    from vla_ros.sim.demos import collect_episode
    from vla_ros.training.policy import colour_maps, relevance_of

    env, expert = _STATE['env'], _STATE['expert']
    stride = int(job.get('stride', 1))
    env.config.episode_timeout_s = min(_STATE['timeout'], job['max_steps'] * expert.config.action_dt)
    ep = collect_episode(env, expert, job['seed'], noise_std=job['noise'], hold_steps=job['hold_steps'],
                         rng=np.random.default_rng(job['seed'] + 7919), stride=stride)
    env.config.episode_timeout_s = _STATE['timeout']
    grid = tuple(job.get('grid', (8, 8)))
    relevance = np.stack([relevance_of(img, ep.instruction, grid) for img in ep.images])
    colours = np.stack([colour_maps(img, grid, _STATE['task']) for img in ep.images])
    return {'seed': ep.seed, 'instruction': ep.instruction, 'images': ep.images, 'proprio': ep.proprio,
            'actions': ep.chunks, 'relevance': relevance.astype(np.float16), 'colours': colours.astype(np.float16),
            'targets': ep.targets, 'success': ep.success,
            'decision_dt': float(expert.config.action_dt) * stride,
            'steps_to_success': ep.steps_to_success}


def expert_outcome(job: dict) -> dict:
    """One noise-free expert episode without rendering -> success and time (expert_check)."""
    env, expert = _STATE['env'], _STATE['expert']
    env.reset(seed=job['seed'])
    steps = 0
    while not env.done() and steps < job['max_steps']:
        env.step_to(expert.chunk(env.joint_positions())[0], expert.config.action_dt)
        steps += 1
    return {'seed': job['seed'], 'success': bool(env.success()), 'elapsed_s': float(env.elapsed_s),
            'final_distance_m': float(env.distance_to_goal())}


def _load_policy(model_dir: str, perception: Optional[dict] = None) -> dict:
    """The checkpoint's perception pipeline (the worker task's perception settings, as the stack's params
    file, + `perception` overrides), lightweight planner and action head, cached per worker process."""
    from vla_ros.config import PerceptionConfig
    from vla_ros.config.tasks import task_config

    stamp = os.path.getmtime(os.path.join(model_dir, 'action_head.pt'))
    perception_cfg = task_config(PerceptionConfig, 'perception', _STATE.get('task', 'touch'), perception)
    policy = _STATE.get('policy')
    if (policy is not None and policy['dir'] == model_dir and policy['stamp'] == stamp
            and policy['perception'] == perception_cfg):
        return policy
    from vla_ros.action.flow_head import FlowMatchingActionHead
    from vla_ros.config import PlannerConfig
    from vla_ros.perception.encoder import VisionEncoder
    from vla_ros.perception.pipeline import PerceptionPipeline
    from vla_ros.planning.base import make_planner

    encoder = VisionEncoder.from_pretrained(os.path.join(model_dir, 'vision_encoder'))
    policy = {'dir': model_dir, 'stamp': stamp, 'perception': perception_cfg,
              'pipeline': PerceptionPipeline(encoder, perception_cfg),
              'planner': make_planner(PlannerConfig(), encoder.hidden_size),
              'head': FlowMatchingActionHead.load(os.path.join(model_dir, 'action_head.pt')).eval()}
    _STATE['policy'] = policy
    return policy


def policy_episode(job: dict) -> dict:
    """One closed-loop policy episode (no ROS); with job['record'] also the perceived states,
    each labelled with the expert's chunk from that state (DAgger). job['delay'] (s): the observation
    delay of `evaluate_policy` (frames are recorded at capture, with the joints of that moment);
    job['inference_delay'] (s) its slow head; job['smoothing'] an action.smoothing override."""
    import torch

    from vla_ros.sim.demos import evaluate_policy, perception_period_s
    from vla_ros.training.policy import colour_maps, relevance_of

    env, expert = _STATE['env'], _STATE['expert']
    policy = _load_policy(job['model_dir'], job.get('perception'))
    images, proprio, actions, targets = [], [], [], []

    def record(image, q):
        images.append(image)
        targets.append(env.task_targets())
        proprio.append(np.asarray(q, np.float32))
        actions.append(expert.chunk(q).astype(np.float32))

    cache = None
    if job.get('plan_cache'):                 # as the planner node, with PlannerConfig's cache settings
        from vla_ros.config import PlannerConfig
        from vla_ros.planning.plan_cache import PlanCache
        cache = PlanCache.from_config(PlannerConfig())
    with torch.no_grad():
        action_cfg = _STATE['action_cfg']
        if job.get('smoothing'):
            action_cfg = dataclasses.replace(action_cfg, smoothing=job['smoothing'])
        res = evaluate_policy(env, policy['pipeline'], policy['planner'], policy['head'], action_cfg,
                              [job['seed']], on_perceive=record if job.get('record') else None,
                              observation_delay_s=float(job.get('delay', 0.0)), plan_cache=cache,
                              inference_delay_s=float(job.get('inference_delay', 0.0)))
    out = {'seed': job['seed'], 'instruction': res.instructions[0], 'success': bool(res.successes[0]),
           'elapsed_s': float(res.elapsed_s[0]), 'final_distance_m': float(res.final_distances[0]),
           'decision_dt': perception_period_s(_STATE['action_cfg'])}
    if job.get('record') and images:
        grid = tuple(policy['pipeline'].encoder.grid_hw)
        out.update(images=np.stack(images), proprio=np.stack(proprio), actions=np.stack(actions),
                   targets=np.stack(targets),
                   relevance=np.stack([relevance_of(i, out['instruction'], grid) for i in images]).astype(np.float16),
                   colours=np.stack([colour_maps(i, grid, _STATE['task']) for i in images]).astype(np.float16))
    return out


class _Indexed:
    """Picklable wrapper returning (job index, result), so results keep the job order."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, item):
        i, job = item
        return i, self.fn(job)


def run_jobs(fn: Callable[[dict], dict], jobs: Iterable[dict], workers: int, episode_timeout_s: float,
             desc: str = '', progress: bool = True, on_result: Optional[Callable[[dict], None]] = None,
             task: str = 'touch') -> List[dict]:
    """Run one job per episode on `workers` spawned processes (0 = all cores, 1 = in this process);
    results come back in job order."""
    from tqdm import tqdm

    jobs = list(jobs)
    workers = max(1, min(int(workers) or (os.cpu_count() or 1), len(jobs) or 1))
    bar = tqdm(total=len(jobs), desc=desc, unit='ep', disable=not progress)
    results: List[Optional[dict]] = [None] * len(jobs)

    def done(i, res):
        results[i] = res
        bar.update(1)
        if on_result is not None:
            on_result(res)

    if workers == 1:
        if 'env' not in _STATE or _STATE.get('timeout') != episode_timeout_s or _STATE.get('task') != task:
            _init_worker(episode_timeout_s, torch_threads=0, task=task)
        for i, job in enumerate(jobs):
            done(i, fn(job))
    else:
        ctx = mp.get_context('spawn')
        with ctx.Pool(workers, initializer=_init_worker, initargs=(episode_timeout_s, 1, task)) as pool:
            for i, res in pool.imap_unordered(_Indexed(fn), list(enumerate(jobs)), chunksize=1):
                done(i, res)
    bar.close()
    return results  # type: ignore[return-value]
