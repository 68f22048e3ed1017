"""Expert demonstrations -> action-head training samples, and closed-loop policy evaluation (no ROS).

Collection records, every action_dt, the camera image, joint positions, instruction and the
expert's next H joint targets. Featurisation then runs the real perception pipeline and planner
over each episode in time order (temporal feature reuse included), so the head is trained on
exactly the token distribution the ROS closed loop feeds it.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

from vla_ros.sim.arm_env import ArmEnv


@dataclass
class Episode:
    seed: int
    instruction: str
    images: np.ndarray        # uint8 [T, H, W, 3]
    proprio: np.ndarray       # float32 [T, J] measured joint positions at each decision
    chunks: np.ndarray        # float32 [T, horizon, J] expert targets; step k applies k * dt later
    success: bool
    steps_to_success: int = -1
    targets: Optional[np.ndarray] = None   # float32 [T, 6] ArmEnv.task_targets() at each decision (sim only)

    def to_arrays(self) -> Dict[str, np.ndarray]:
        out = {'seed': np.array(self.seed), 'instruction': np.array(self.instruction),
               'images': self.images, 'proprio': self.proprio, 'chunks': self.chunks,
               'success': np.array(self.success), 'steps_to_success': np.array(self.steps_to_success)}
        if self.targets is not None:
            out['targets'] = self.targets
        return out

    @classmethod
    def from_arrays(cls, d) -> 'Episode':
        return cls(seed=int(d['seed']), instruction=str(d['instruction']), images=d['images'],
                   proprio=d['proprio'], chunks=d['chunks'], success=bool(d['success']),
                   steps_to_success=int(d['steps_to_success']),
                   targets=d['targets'] if 'targets' in d else None)


def collect_episode(env: ArmEnv, expert, seed: int, noise_std: float = 0.0,
                    hold_steps: int = 10, rng: Optional[np.random.Generator] = None, stride: int = 1) -> Episode:
    """Run one expert episode; executed targets get Gaussian noise (labels stay clean).

    Noise injection (DART-style) puts the expert in states a learned policy drifts into and
    labels them with the expert's correction, which plain behaviour cloning never sees.
    `hold_steps` extra decisions after success teach the policy to stay on the cube (touch) / away
    from it (pick_place). `expert` is a TouchExpert or PickPlaceExpert (chunk(q) -> [H, J]).

    `stride` > 1: the expert decides (and a sample is recorded) every `stride` steps of `action_dt` and
    executes the first `stride` rows of its chunk in between, as the policy does at its inference rate
    (fewer, less correlated samples per episode: more layouts for the same memory and time).
    """
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    rng = rng or np.random.default_rng(seed)
    env.reset(seed=seed)
    dt = expert.config.action_dt
    images, proprio, chunks, targets = [], [], [], []
    steps_to_success, extra = -1, 0
    while not env.timed_out():
        q = env.joint_positions()
        chunk = expert.chunk(q)
        images.append(env.render())
        targets.append(env.task_targets())
        proprio.append(q.astype(np.float32))
        chunks.append(chunk.astype(np.float32))
        for k in range(min(stride, len(chunk))):
            command = chunk[k].copy()
            if noise_std > 0:        # arm joints only: the gripper target is open/closed, not a joint angle
                command[env.arm_index] += rng.normal(0.0, noise_std, size=len(env.arm_index))
            env.step_to(command, dt)
            if env.success() or env.timed_out():
                break
        if env.success():
            if steps_to_success < 0:
                steps_to_success = len(proprio)
            extra += 1
            if extra > hold_steps:
                break
    return Episode(seed=seed, instruction=env.instruction, images=np.stack(images), proprio=np.stack(proprio),
                   chunks=np.stack(chunks), success=env.success(), steps_to_success=steps_to_success,
                   targets=np.stack(targets))


def featurize_episode(episode: Episode, pipeline, planner, plan_every: int = 1) -> List[Dict[str, np.ndarray]]:
    """Training samples (vis_tokens, plan_tokens, proprio, actions) for one episode, in time order.

    `plan_every` > 1 reuses plan tokens between planner calls, as the slow planner does online.
    """
    from vla_ros.planning.base import PlanRequest

    pipeline.reset()
    pipeline.set_instruction(episode.instruction)
    samples: List[Dict[str, np.ndarray]] = []
    plan_tokens = None
    for t in range(len(episode.proprio)):
        result = pipeline.process(episode.images[t])
        if plan_tokens is None or t % plan_every == 0:
            plan = planner.plan(PlanRequest(instruction=episode.instruction, visual_tokens=result.tokens,
                                            kept_indices=result.kept_indices, grid_hw=tuple(result.grid_hw),
                                            proprio=episode.proprio[t], stamp_ns=0, frame_id=t))
            plan_tokens = plan.plan_tokens
        samples.append({'vis_tokens': result.tokens.astype(np.float32),
                        'plan_tokens': np.asarray(plan_tokens, dtype=np.float32),
                        'proprio': episode.proprio[t].astype(np.float32),
                        'actions': episode.chunks[t].astype(np.float32)})
    return samples


@dataclass
class EvalResult:
    seeds: List[int]
    successes: List[bool]
    final_distances: List[float]
    elapsed_s: List[float]
    instructions: List[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def summary(self) -> Dict[str, object]:
        return {'episodes': len(self.seeds), 'success_rate': self.success_rate,
                'mean_final_distance_m': float(np.mean(self.final_distances)),
                'mean_elapsed_s': float(np.mean(self.elapsed_s)),
                'per_episode': [{'seed': s, 'success': bool(ok), 'final_distance_m': round(float(d), 4),
                                 'elapsed_s': round(float(e), 2), 'instruction': i}
                                for s, ok, d, e, i in zip(self.seeds, self.successes, self.final_distances,
                                                          self.elapsed_s, self.instructions)]}


PERCEPTION_RATE_HZ = 10.0     # evaluate_policy's perception and chunk-inference rate (the stack's chunk_rate_hz)


def _ticks_between(rate_hz: float, control_dt: float) -> int:
    """Control ticks between two events at `rate_hz` (at least 1)."""
    return max(1, int(round(1.0 / (rate_hz * control_dt))))


def perception_period_s(action_cfg, perception_rate_hz: float = PERCEPTION_RATE_HZ) -> float:
    """Sim seconds between two frames `evaluate_policy` perceives (a whole number of control ticks)."""
    control_dt = 1.0 / action_cfg.control_rate_hz
    return _ticks_between(perception_rate_hz, control_dt) * control_dt


def evaluate_policy(env: ArmEnv, pipeline, planner, head, action_cfg, seeds,
                    perception_rate_hz: float = PERCEPTION_RATE_HZ, plan_rate_hz: float = 2.0,
                    progress: Optional[Callable] = None, on_perceive: Optional[Callable] = None,
                    observation_delay_s: float = 0.0, plan_cache=None,
                    inference_delay_s: float = 0.0) -> EvalResult:
    """Closed loop on simulated time, no ROS: the same ControlLoop (chunk buffer + RTC/ensembling +
    safety filter) the action node runs, driven at control rate; perception and chunk inference at
    `perception_rate_hz`, planning at `plan_rate_hz`.

    `observation_delay_s` models the stack's latency from camera exposure to chunk (perception,
    transport, waiting for the inference tick): the tokens and plan of a frame reach the control loop
    that much later (sim time), and the chunk is inferred then, from them and the joint positions of
    that moment (the action node's proprioception is always the latest). 0 = the ideal loop.

    `on_perceive(image, joint_positions)`, if given, sees every frame the policy perceives, at its
    capture (DAgger records the policy's own states through it).

    `inference_delay_s` models a slow action head: a chunk inferred from the inputs of `now` takes over at
    `now + inference_delay_s` (RTC freezes exactly the steps that run meanwhile), and the head infers one chunk
    at a time: inputs arriving while it is busy wait for it, then the latest are used. 0 = instant.

    `plan_cache` (a `PlanCache`, cleared per episode): plan requests go through it as in the planner
    node (`AsyncPlanner`): while instruction and scene embedding hold, the cached plan answers. None =
    every request plans.
    """
    from vla_ros.action.controller import ControlLoop
    from vla_ros.planning.base import PlanRequest
    from vla_ros.planning.plan_cache import scene_embedding

    control_dt = 1.0 / action_cfg.control_rate_hz
    perceive_every = _ticks_between(perception_rate_hz, control_dt)
    plan_every = _ticks_between(plan_rate_hz, control_dt)
    if not (observation_delay_s >= 0.0 and inference_delay_s >= 0.0):
        raise ValueError(f'delays must be >= 0, got observation {observation_delay_s}, inference {inference_delay_s}')
    delay_ticks = int(round(observation_delay_s / control_dt))
    result = EvalResult([], [], [], [], [])
    for seed in seeds:
        env.reset(seed=int(seed))
        clock_now = [env.elapsed_s]
        loop = ControlLoop(head, action_cfg, clock=lambda: clock_now[0], seed=int(seed))
        pipeline.reset()
        pipeline.set_instruction(env.instruction)
        if plan_cache is not None:
            plan_cache.clear()
        tick = 0
        head_free_at, inputs_waiting = -math.inf, False
        in_flight: Deque[tuple] = deque()    # (tick it arrives, frame tick, capture time, tokens, plan tokens)
        while not env.done():
            now = env.elapsed_s
            clock_now[0] = now
            q = env.joint_positions()
            loop.update_proprio(q, now=now)
            if tick % perceive_every == 0:
                image = env.render()
                if on_perceive is not None:
                    on_perceive(image, q)
                perceived = pipeline.process(image)
                plan_tokens = None
                if tick % plan_every == 0:
                    emb = scene_embedding(perceived.tokens) if plan_cache is not None else None
                    plan = None if plan_cache is None else plan_cache.lookup(env.instruction, emb, now)
                    if plan is None:
                        plan = planner.plan(PlanRequest(instruction=env.instruction, visual_tokens=perceived.tokens,
                                                        kept_indices=perceived.kept_indices,
                                                        grid_hw=tuple(perceived.grid_hw), proprio=q, frame_id=tick))
                        if plan_cache is not None:
                            plan_cache.store(env.instruction, emb, plan, now)
                    plan_tokens = plan.plan_tokens
                in_flight.append((tick + delay_ticks, tick, now, perceived.tokens, plan_tokens))
            arrived = False
            while in_flight and in_flight[0][0] <= tick:
                _, frame, captured, tokens, plan_tokens = in_flight.popleft()
                # ages count from the capture, as the action node's do (header stamps)
                loop.update_perception(tokens, frame_id=frame, now=captured)
                if plan_tokens is not None:
                    loop.update_plan(plan_tokens, plan_id=frame, now=captured)
                arrived = True
            inputs_waiting = inputs_waiting or arrived
            if inputs_waiting and now >= head_free_at - 1e-9:
                loop.infer_chunk(now=now, active_from=now + inference_delay_s)
                head_free_at, inputs_waiting = now + inference_delay_s, False
            command, _status = loop.tick(now)
            env.step_to(command if command is not None else q, control_dt)
            tick += 1
        result.seeds.append(int(seed))
        result.successes.append(env.success())
        result.final_distances.append(env.distance_to_goal())
        result.elapsed_s.append(env.elapsed_s)
        result.instructions.append(env.instruction)
        if progress is not None:
            progress(result)
    return result
