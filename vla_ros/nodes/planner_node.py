"""Planner node: the slow system. Newest perception tokens + instruction in, Plan (sub-task text +
latent plan tokens) out, computed in a background thread (vla_ros.planning.runner.AsyncPlanner)
so a slow VLM never blocks anything else.

Switching planners (documented in README/config): every `planner.*` parameter can be set at runtime,
e.g. `ros2 param set /vla/planner planner.model_path /models/smolvlm` then
`ros2 param set /vla/planner planner.type vlm` (or both at once with `ros2 param load`). The new
planner loads in a background thread while the old one keeps publishing; on success it is swapped
in and the plan cache is cleared. A VLM path without a checkpoint is rejected at set time; a load
failure logs an error, reverts the parameters and keeps the previous planner. On restart the
parameters (YAML / launch `planner:=vlm`) select the planner; at startup a bad VLM path is fatal.
Cache parameters and rate_hz apply immediately without reloading; topic names need a restart.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Dict, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Empty, String

from vla_ros.config.base import ConfigError, config_from_dict
from vla_ros.config.planning import PlannerConfig
from vla_ros.config.timing import TimingConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.nodes.common import (LATCHED_QOS, MS_PER_S, SENSOR_QOS, Diagnostics, DropCounter, TokenDecodeError, msg_to_tokens,
                                  ns_to_stamp, reliable_qos, tokens_to_msg)
from vla_ros.nodes.params import AtomicParameterService, declare_config
from vla_ros.planning.base import PlanOutput, Planner, PlanRequest, make_planner
from vla_ros.planning.plan_cache import MISS_REASONS, PlanCache
from vla_ros.planning.runner import AsyncPlanner, PlanMeta
from vla_ros.planning.vlm import VLMLoadError, describe, resolve_model_path
from vla_ros.timing import StampGate, stamp_to_ns
from vla_ros_msgs.msg import LatentTokens, Plan

PREFIX = 'planner'
# Applied in place; every other planner.* field means building a new planner.
_LIVE_FIELDS = {'cache_enabled', 'cache_similarity', 'cache_timeout_s', 'rate_hz', 'default_instruction',
                'max_input_age_s', 'max_instruction_chars', 'max_token_abs'}
# Only read by the VLM planner: changing them while the lightweight planner runs needs no reload.
_VLM_ONLY_FIELDS = {'model_path', 'device', 'torch_threads', 'max_new_tokens', 'plan_token_source', 'plan_layer',
                    'max_visual_tokens', 'prompt', 'fast_prefill', 'kv_reuse', 'kv_refresh_interval',
                    'compile_layers'}


def model_path_problem(cfg: PlannerConfig) -> str:
    """Why cfg.model_path cannot be loaded as a VLM ('' when it names a checkpoint)."""
    try:
        resolve_model_path(cfg.model_path)
    except VLMLoadError as exc:
        return str(exc)
    return ''


class PlannerNode(Node):
    def __init__(self, **kwargs):
        kwargs.setdefault('start_parameter_services', False)
        super().__init__('planner', **kwargs)
        if not kwargs['start_parameter_services']:
            self._param_service = AtomicParameterService(self)  # a rejected request changes nothing
        self.cfg: PlannerConfig = declare_config(self, PlannerConfig, PREFIX)
        self.topics: TopicsConfig = declare_config(self, TopicsConfig, 'topics')
        self.timing: TimingConfig = declare_config(self, TimingConfig, 'timing')
        self.drops = DropCounter(self.get_logger())
        self._stamp_gate = StampGate(self.cfg.max_input_age_s, self.timing.max_future_s, self.timing.clock_jump_s)
        self._lock = threading.Lock()
        self._frame: Optional[PlanRequest] = None
        self._frame_seq = 0
        self._submitted_key = None
        self._plan_after_ns: Optional[int] = None   # plan the first frame stamped at/after this at once
        self.replan_requests = 0
        self._instruction: Optional[str] = None
        self._published = 0
        self._load_lock = threading.Lock()
        self._load_generation = 0
        self._loading = False
        self._load_error = ''
        self._reverting = False

        try:
            planner = make_planner(self.cfg, 0)
        except Exception as exc:
            self.get_logger().fatal(f'cannot create planner.type={self.cfg.type!r} '
                                    f'(model_path={self.cfg.model_path!r}): {exc}')
            raise RuntimeError(f'planner startup failed: {exc}') from exc
        self.get_logger().info(f'planner ready: {describe(planner)}')
        self.runner = AsyncPlanner(planner, PlanCache.from_config(self.cfg), on_result=self._publish_plan,
                                   on_error=self._on_plan_error)

        self._plan_pub = self.create_publisher(Plan, self.topics.plan, reliable_qos())
        group = MutuallyExclusiveCallbackGroup()
        # Best effort matches any perception publisher; only the newest frame matters anyway.
        self.create_subscription(LatentTokens, self.topics.perception_tokens, self._on_tokens, SENSOR_QOS,
                                 callback_group=group)
        self.create_subscription(String, self.topics.instruction, self._on_instruction, LATCHED_QOS,
                                 callback_group=group)
        self.create_subscription(Empty, self.topics.replan, self._on_replan, reliable_qos(),
                                 callback_group=group)
        self._timer_group = group
        self._timer = self.create_timer(1.0 / self.cfg.rate_hz, self._submit_newest_frame, callback_group=group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics = Diagnostics(self, self._status, level_fn=self._level)

    # ------------------------------------------------------------------ inputs
    @property
    def instruction(self) -> str:
        return self._instruction if self._instruction is not None else self.cfg.default_instruction

    def _on_tokens(self, msg: LatentTokens) -> None:
        try:
            tokens = msg_to_tokens(msg, self.cfg.max_token_abs)
        except TokenDecodeError as exc:
            self.drops.drop('bad_perception_tokens', str(exc))
            return
        kept = np.asarray(msg.kept_indices, dtype=np.int32)
        if kept.size not in (0, tokens.shape[0]):
            self.drops.drop('bad_kept_indices', f'{kept.size} indices for {tokens.shape[0]} tokens')
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        reason = self._stamp_gate.check(stamp_ns, self.get_clock().now().nanoseconds)
        if reason is not None:
            self.drops.drop(reason, f'perception frame {msg.sequence}')
            return
        req = PlanRequest(instruction='', visual_tokens=tokens, kept_indices=kept if kept.size else None,
                          grid_hw=(int(msg.grid_height), int(msg.grid_width)),
                          proprio=np.asarray(msg.proprio, dtype=np.float32), stamp_ns=stamp_ns,
                          frame_id=int(msg.sequence))
        with self._lock:
            self._frame = req
            self._frame_seq += 1
        if self._plan_after_ns is not None and stamp_ns >= self._plan_after_ns:
            self._plan_after_ns = None     # the first frame captured after an instruction or replan request
            self._submit_newest_frame()

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            self.drops.drop('empty_instruction', 'ignored an empty instruction')
            return
        if len(text) > self.cfg.max_instruction_chars:
            self.drops.drop('instruction_too_long', f'{len(text)} characters > {self.cfg.max_instruction_chars}; '
                                                    f'keeping {self.instruction!r}')
            return
        if text != self._instruction:
            self.get_logger().info(f'instruction: {text!r}')
        self._instruction = text
        self._plan_next_frame()     # every instruction message is a task: plan it now, on a frame of now

    def _plan_next_frame(self) -> None:
        """Plan the first frame captured from now on as soon as it arrives (not at the next timer tick),
        bypassing the plan cache: an instruction was (re)sent, or the action node restarted the arm (an
        episode reset) and waits for a plan of the scene as it is now."""
        self.runner.request_replan()
        self._plan_after_ns = self.get_clock().now().nanoseconds

    def _on_replan(self, _msg: Empty) -> None:
        self.replan_requests += 1
        self._plan_next_frame()

    def _submit_newest_frame(self) -> None:
        """Hand the newest frame to the background planner (returns at once)."""
        with self._lock:
            frame, seq = self._frame, self._frame_seq
        if frame is None:
            return  # no perception yet: nothing to plan on
        key = (seq, self.instruction)
        if key == self._submitted_key:
            return  # perception stalled: re-planning the same frame adds nothing
        self._submitted_key = key
        self.runner.submit(dataclasses.replace(frame, instruction=self.instruction))

    # ------------------------------------------------------------------ output (planner thread)
    def _publish_plan(self, out: PlanOutput, meta: PlanMeta) -> None:
        stamp = ns_to_stamp(meta.stamp_ns)
        msg = Plan()
        msg.header.stamp = stamp
        msg.header.frame_id = 'plan'
        msg.plan_id = int(meta.plan_id)
        msg.planner_type = meta.planner_type
        msg.instruction = meta.instruction
        msg.subtask = out.subtask
        msg.cache_hit = bool(meta.cache_hit)
        msg.cache_hit_rate = float(meta.cache_hit_rate)
        msg.latency = float(meta.latency_ms) / MS_PER_S
        msg.plan_tokens = tokens_to_msg(out.plan_tokens, stamp=stamp, frame_id='plan',
                                        source=f'planner/{meta.planner_type}', plan_id=meta.plan_id,
                                        frame_counter=meta.frame_id, compute_ms=meta.latency_ms)
        try:
            self._plan_pub.publish(msg)
            self._published += 1
        except Exception as exc:  # context shutting down while the planner thread finishes
            self.get_logger().warning(f'could not publish plan {meta.plan_id}: {exc}')

    def _on_plan_error(self, exc: Exception) -> None:
        self.drops.drop('planner_error', f'{type(exc).__name__}: {exc} (previous plan kept)')

    # ------------------------------------------------------------------ runtime reconfiguration
    def _on_set_parameters(self, params) -> SetParametersResult:
        changes: Dict[str, object] = {}
        for p in params:
            if p.name.startswith('topics.'):
                return SetParametersResult(successful=False, reason='topic names apply on restart only')
            if p.name.startswith(PREFIX + '.'):
                changes[p.name[len(PREFIX) + 1:]] = p.value
        if not changes or self._reverting:
            return SetParametersResult(successful=True)
        try:
            new_cfg = config_from_dict(PlannerConfig, {**dataclasses.asdict(self.cfg), **changes})
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        problem = model_path_problem(new_cfg) if new_cfg.type == 'vlm' else ''
        if problem:
            reason = (f'{problem}; keeping the {self.runner.planner.type_name} planner (set planner.model_path '
                      'before planner.type, or set both atomically)')
            self.get_logger().error(reason)
            return SetParametersResult(successful=False, reason=reason)
        old_cfg, self.cfg = self.cfg, new_cfg
        self._apply_live(old_cfg, new_cfg)
        ignored = _LIVE_FIELDS | (_VLM_ONLY_FIELDS if new_cfg.type == old_cfg.type == 'lightweight' else set())
        if any(k not in ignored and getattr(old_cfg, k) != getattr(new_cfg, k) for k in changes):
            self._start_load(old_cfg, new_cfg)
        return SetParametersResult(successful=True)

    def _apply_live(self, old: PlannerConfig, new: PlannerConfig) -> None:
        if (old.cache_enabled, old.cache_similarity, old.cache_timeout_s) != \
                (new.cache_enabled, new.cache_similarity, new.cache_timeout_s):
            self.runner.cache = PlanCache.from_config(new)
        if old.rate_hz != new.rate_hz:
            self._timer.cancel()
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(1.0 / new.rate_hz, self._submit_newest_frame,
                                            callback_group=self._timer_group)
        self._stamp_gate.max_age_s = new.max_input_age_s

    def _start_load(self, old_cfg: PlannerConfig, new_cfg: PlannerConfig) -> None:
        with self._load_lock:
            self._load_generation += 1
            generation = self._load_generation
            self._loading = True
        self.get_logger().info(f'loading planner.type={new_cfg.type} in the background '
                               f'(model_path={new_cfg.model_path!r}); {self.runner.planner.type_name} keeps serving')
        threading.Thread(target=self._load, args=(old_cfg, new_cfg, generation), name='planner-load',
                         daemon=True).start()

    def _load(self, old_cfg: PlannerConfig, new_cfg: PlannerConfig, generation: int) -> None:
        try:
            planner: Planner = make_planner(new_cfg, 0)
        except Exception as exc:
            with self._load_lock:
                if generation != self._load_generation:
                    return
                self._loading = False
                self._load_error = f'{type(exc).__name__}: {exc}'
            self.get_logger().error(f'cannot load planner.type={new_cfg.type!r} (model_path='
                                    f'{new_cfg.model_path!r}): {exc}; keeping the previous planner')
            self._revert_parameters(old_cfg, new_cfg)
            return
        with self._load_lock:
            if generation != self._load_generation:
                return  # a newer switch request superseded this one
            self._loading = False
            self._load_error = ''
            self.runner.swap(planner)
        self.get_logger().info(f'switched planner: {describe(planner)}')

    def _revert_parameters(self, old_cfg: PlannerConfig, new_cfg: PlannerConfig) -> None:
        """Make the parameters say what actually runs again."""
        old, new = dataclasses.asdict(old_cfg), dataclasses.asdict(new_cfg)
        params = [Parameter(f'{PREFIX}.{k}', value=old[k]) for k in old if old[k] != new[k]]
        self._reverting = True
        try:
            self.set_parameters(params)
        finally:
            self._reverting = False
        self.cfg = old_cfg

    # ------------------------------------------------------------------ diagnostics
    def _status(self):
        r = self.runner
        cache = r.cache
        out = {'planner': describe(r.planner), 'instruction': self.instruction, 'plans': r.plans,
               'results': r.results, 'published': self._published, 'superseded_requests': r.superseded,
               'planner_errors': r.errors, 'latency_p50_ms': r.latency_percentile(50),
               'latency_miss_p50_ms': r.latency_percentile(50, misses_only=True),
               'cache_enabled': cache is not None, 'dropped': self.drops.total, 'loading': self._loading,
               'replan_requests': self.replan_requests}
        if cache is not None:
            out.update(cache_hit_rate=cache.stats.hit_rate, cache_hits=cache.stats.hits,
                       cache_misses=cache.stats.misses)
            out.update({f'cache_miss_{k}': cache.stats.miss_reasons[k] for k in MISS_REASONS})
        out.update({f'drop_{k}': v for k, v in self.drops.counts.items()})
        if r.last_error:
            out['last_planner_error'] = r.last_error
        if self._load_error:
            out['load_error'] = self._load_error
        return out

    def _level(self):
        if self._load_error:
            return DiagnosticStatus.WARN, f'planner switch failed: {self._load_error}'
        if self._frame is None:
            return DiagnosticStatus.WARN, 'waiting for perception tokens'
        if self.runner.errors and self.runner.results == 0:
            return DiagnosticStatus.ERROR, f'planner failing: {self.runner.last_error}'
        return DiagnosticStatus.OK, describe(self.runner.planner)

    def close(self) -> None:
        self._timer.cancel()
        self.runner.close()


def main(args=None):
    from vla_ros.nodes.common import spin_node
    spin_node(lambda: PlannerNode(), args)


if __name__ == '__main__':
    main()
