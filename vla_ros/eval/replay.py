"""Offline replay: perception + planner + action head over a recorded bag (what `ros2 bag play` + the
nodes would do), so two settings are compared on identical input.

    python -m vla_ros.eval.replay runs/demo/bag --out runs/replay/on
    python -m vla_ros.eval.replay runs/demo/bag --out runs/replay/off --set perception.keep_ratio=1.0 \\
        --set perception.pruning=none --set perception.reuse_enabled=false --set planner.cache_enabled=false
    vla_evaluate runs/replay/on/bag runs/replay/off/bag --label on --label off --out runs/replay/compare

Algorithm level, no ROS graph: every camera frame of the bag (recorded with
`recorder.record_images:=true`) goes through the real PerceptionPipeline; the planner (with its
plan cache, clocked by bag time) is asked at `planner.rate_hz` of bag time, as the planner node's
timer does; the action head infers one chunk per frame from the newest plan and that frame's joint
state, with noise seeded per frame so both settings draw the same noise. `--realtime` paces frames
at their recorded times and, like the live nodes, skips a frame when a newer one is already due.
`--through-nodes` instead plays the bag into the real nodes over DDS with a sim clock
(vla_ros.replay_nodes, real time only).

Outputs in --out: `bag/` (LatentTokens, Plan, ActionChunk stamped with the source image stamps, plus
the source's instruction and task status) for `vla_evaluate`, whose compare mode pairs replays of
the same source frame by frame, and `replay.json` (settings, counts, timing).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from vla_ros.config.action import ActionConfig
from vla_ros.config.base import ConfigError, config_from_dict, parse_assignment
from vla_ros.config.perception import PerceptionConfig
from vla_ros.config.planning import PlannerConfig
from vla_ros.eval.replay_inputs import ReplayFrame, find_inputs, iter_frames
from vla_ros.eval.replay_output import ReplayBagWriter

SECTIONS = {'perception': PerceptionConfig, 'planner': PlannerConfig, 'action': ActionConfig}


@dataclass
class ReplaySettings:
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    seed: int = 0


def settings_from_overrides(overrides: Dict[str, object], seed: int = 0) -> ReplaySettings:
    """{'perception.keep_ratio': 1.0, ...} -> validated configs (unknown keys raise ConfigError)."""
    per: Dict[str, Dict[str, object]] = {name: {} for name in SECTIONS}
    for key, value in overrides.items():
        section, _, rest = key.partition('.')
        if section not in SECTIONS or not rest:
            raise SystemExit(f'--set {key}: replay settings live under {sorted(SECTIONS)}')
        per[section][rest] = value
    built = {name: config_from_dict(cls, per[name], name + '.') for name, cls in SECTIONS.items()}
    return ReplaySettings(seed=seed, **built)


@dataclass
class FrameOutput:
    frame: ReplayFrame
    tokens: np.ndarray
    kept_indices: np.ndarray
    grid_hw: tuple
    keep_ratio: float
    reuse_ratio: float
    is_keyframe: bool
    perception_ms: float
    plan: Optional[object] = None           # PlanOutput when the planner answered on this frame
    plan_meta: Optional[object] = None      # its PlanMeta
    chunk: Optional[np.ndarray] = None      # [H, A] joint targets (rad), None without joint state
    plan_id: int = 0
    action_ms: float = 0.0


class OfflineStack:
    """The three stages as plain modules, fed frame by frame."""

    def __init__(self, settings: ReplaySettings):
        from vla_ros.action.controller import build_head
        from vla_ros.perception.encoder import VisionEncoder
        from vla_ros.perception.pipeline import PerceptionPipeline
        from vla_ros.planning.base import make_planner
        from vla_ros.planning.plan_cache import PlanCache
        from vla_ros.planning.runner import AsyncPlanner
        from vla_ros.resources import resolve_path
        self.settings = s = settings
        threads = s.perception.torch_threads or s.action.torch_threads   # as the nodes set them
        if threads > 0:
            torch.set_num_threads(threads)
        encoder_path = resolve_path(s.perception.encoder_path, 'perception.encoder_path', kind='dir',
                                    marker='config.json')
        encoder = VisionEncoder.from_pretrained(encoder_path, device=s.perception.device)
        self.pipeline = PerceptionPipeline(encoder, s.perception)
        self._bag_time_s = 0.0
        self.planner = AsyncPlanner(make_planner(s.planner, encoder.hidden_size), PlanCache.from_config(s.planner),
                                    clock=lambda: self._bag_time_s)   # cache timeouts in bag time
        action_cfg = s.action
        if action_cfg.checkpoint_path:
            action_cfg = dataclasses.replace(action_cfg, checkpoint_path=resolve_path(
                action_cfg.checkpoint_path, 'action.checkpoint_path', kind='file'))
        self.head, self.head_loaded = build_head(action_cfg, encoder.hidden_size, s.planner.plan_token_dim)
        self.head.eval()
        self._plan_tokens: Optional[np.ndarray] = None
        self._plan_id = 0
        self._next_plan_ns: Optional[int] = None
        self._context = None     # (episode, instruction) the pipeline state belongs to

    def close(self) -> None:
        self.planner.close()

    def _joint_vector(self, frame: ReplayFrame) -> Optional[np.ndarray]:
        if frame.joint_positions is None:
            return None
        index = {n: i for i, n in enumerate(frame.joint_names)}
        if any(n not in index for n in self.settings.action.joint_names):
            return None
        return frame.joint_positions[[index[n] for n in self.settings.action.joint_names]]

    def step(self, frame: ReplayFrame) -> FrameOutput:
        from vla_ros.planning.base import PlanRequest
        s = self.settings
        instruction = frame.instruction or s.planner.default_instruction
        if (frame.episode, instruction) != self._context:     # new task: next frame is a keyframe
            self._context = (frame.episode, instruction)
            self.pipeline.set_instruction(instruction)
            self.pipeline.reset()
        self._bag_time_s = frame.stamp_ns / 1e9
        result = self.pipeline.process(frame.rgb)
        out = FrameOutput(frame=frame, tokens=result.tokens, kept_indices=result.kept_indices,
                          grid_hw=tuple(result.grid_hw), keep_ratio=result.keep_ratio,
                          reuse_ratio=result.reuse_ratio, is_keyframe=result.is_keyframe,
                          perception_ms=result.compute_ms)
        q = self._joint_vector(frame)
        if self._next_plan_ns is None or frame.stamp_ns >= self._next_plan_ns:
            self._next_plan_ns = frame.stamp_ns + int(1e9 / s.planner.rate_hz)
            before = self.planner.results
            self.planner.submit(PlanRequest(instruction=instruction, visual_tokens=result.tokens,
                                            kept_indices=result.kept_indices, grid_hw=tuple(result.grid_hw),
                                            proprio=None if q is None else q.astype(np.float32),
                                            stamp_ns=frame.stamp_ns, frame_id=frame.index + 1))
            self.planner.wait_for_results(before + 1)
            plan, meta = self.planner.latest()
            if plan is not None and meta.stamp_ns == frame.stamp_ns:
                out.plan, out.plan_meta = plan, meta
                self._plan_tokens, self._plan_id = plan.plan_tokens, meta.plan_id
        out.plan_id = self._plan_id
        if q is not None and self._plan_tokens is not None:
            generator = torch.Generator().manual_seed(s.seed * 1_000_003 + frame.index)
            start = time.perf_counter()
            chunk = self.head.predict_actions(result.tokens[None], None, self._plan_tokens[None], q[None],
                                              steps=s.action.denoising_steps, generator=generator)
            out.action_ms = (time.perf_counter() - start) * 1e3
            out.chunk = chunk[0].cpu().numpy().astype(np.float32)
        return out


def _due_times(frames: List[ReplayFrame], start_wall: float) -> List[float]:
    log0 = frames[0].log_ns
    return [start_wall + (f.log_ns - log0) / 1e9 for f in frames]


def replay(bag: str, out_dir: str, settings: ReplaySettings, *, realtime: bool = False, progress: bool = True,
           label: str = '', overrides: Optional[Dict[str, object]] = None) -> dict:
    """Run the offline stack over `bag`; writes out_dir/bag and out_dir/replay.json, returns the summary."""
    source = find_inputs(bag)
    stack = OfflineStack(settings)
    os.makedirs(out_dir, exist_ok=True)
    writer = ReplayBagWriter(os.path.join(out_dir, 'bag'), bag, source, settings.action, label=label,
                             settings=overrides or {})
    processed = skipped = no_joint_state = 0
    sums = {'perception_ms': 0.0, 'planner_ms': 0.0, 'action_ms': 0.0}
    plans = 0
    wall_start = time.perf_counter()
    try:
        frames = iter_frames(bag, source, progress=progress, depth_max_m=settings.perception.depth_max_m)
        if realtime:  # paced: decode everything first so decoding never delays the clock
            frames = list(frames)
            due = _due_times(frames, time.monotonic()) if frames else []
        for i, frame in enumerate(frames):
            if realtime:
                if i + 1 < len(due) and time.monotonic() >= due[i + 1]:
                    skipped += 1          # a newer frame is already due: the live node would skip this one
                    continue
                delay = due[i] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            out = stack.step(frame)
            processed += 1
            sums['perception_ms'] += out.perception_ms
            sums['action_ms'] += out.action_ms
            if out.plan is not None:
                plans += 1
                sums['planner_ms'] += out.plan_meta.latency_ms
            if out.chunk is None:
                no_joint_state += 1
            writer.write_frame(out)
        writer.copy_context()
    finally:
        stack.close()
        writer.close()
    wall_s = time.perf_counter() - wall_start
    summary = {
        'source_bag': os.path.abspath(bag), 'label': label, 'realtime': realtime, 'overrides': overrides or {},
        'image_topic': source.image_topic, 'frames_in_bag': source.num_frames, 'frames_processed': processed,
        'frames_skipped_realtime': skipped, 'frames_without_joint_state': no_joint_state,
        'planner_answers': plans, 'head_from_checkpoint': stack.head_loaded, 'wall_s': wall_s,
        'frames_per_s': processed / wall_s if wall_s > 0 else 0.0,
        'mean_perception_ms': sums['perception_ms'] / max(processed, 1),
        'mean_planner_ms': sums['planner_ms'] / max(plans, 1),
        'mean_action_ms': sums['action_ms'] / max(processed - no_joint_state, 1),
        'settings': {name: asdict(getattr(settings, name)) for name in SECTIONS},
        'output_bag': os.path.abspath(os.path.join(out_dir, 'bag')),
    }
    with open(os.path.join(out_dir, 'replay.json'), 'w') as fh:
        json.dump(summary, fh, indent=2)
    return summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='vla_replay', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', help='recorded rosbag2 directory with camera images')
    parser.add_argument('--out', required=True, help='new output directory (bag/ and replay.json go here)')
    parser.add_argument('--set', action='append', default=[], metavar='SECTION.NAME=VALUE',
                        help='override a perception./planner./action. parameter (YAML value), repeatable')
    parser.add_argument('--label', default='', help='name of this setting (stored in the output bag)')
    parser.add_argument('--realtime', action='store_true', help='pace frames at their recorded times')
    parser.add_argument('--through-nodes', action='store_true',
                        help='play the bag into the perception/planner/action nodes over DDS (use_sim_time)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the action head noise (per frame)')
    parser.add_argument('--encoder-path', default='', help='perception.encoder_path (default: the config\'s)')
    parser.add_argument('--checkpoint', default=None,
                        help='action.checkpoint_path (default: the config\'s, the shipped trained head; '
                             'empty = random head)')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def build_overrides(args) -> Dict[str, object]:
    overrides: Dict[str, object] = {}
    if args.encoder_path:
        overrides['perception.encoder_path'] = os.path.abspath(args.encoder_path)
    if args.checkpoint is not None:
        overrides['action.checkpoint_path'] = os.path.abspath(args.checkpoint) if args.checkpoint else ''
    for text in args.set:
        try:
            key, value = parse_assignment(text, '--set', 'section.name=value')
        except ConfigError as exc:
            raise SystemExit(str(exc)) from None
        overrides[key] = value
    return overrides


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if os.path.exists(os.path.join(args.out, 'bag')):
        raise SystemExit(f'{args.out}/bag exists already; choose a new --out')
    overrides = build_overrides(args)
    if args.through_nodes:
        from vla_ros.replay_nodes import replay_through_nodes  # the CLI may start the ROS graph
        summary = replay_through_nodes(args.bag, args.out, overrides, label=args.label)
    else:
        summary = replay(args.bag, args.out, settings_from_overrides(overrides, args.seed), realtime=args.realtime,
                         progress=not args.no_progress, label=args.label, overrides=overrides)
    print(json.dumps({k: v for k, v in summary.items() if k != 'settings'}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
