"""The replay's results as a rosbag2 bag the evaluator reads like a live run's bag.

Per processed frame: LatentTokens (perception), Plan (when the planner answered on that frame) and
ActionChunk, all stamped with the source image stamp and logged at the source image's log time,
so replays of one source line up frame by frame. The source's instruction and task status are
copied so the report names the task. custom_data records the source bag, label and settings.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader

from vla_ros.eval.bag_io import BagWriter
from vla_ros.eval.replay_inputs import ReplaySource

NAMESPACE = '/replay'
SOURCE_KEY = 'vla_ros.replay.source'
LABEL_KEY = 'vla_ros.replay.label'
SETTINGS_KEY = 'vla_ros.replay.settings'
MS_PER_S = 1e3


def _stamp(ns: int):
    from builtin_interfaces.msg import Time
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


class ReplayBagWriter:
    def __init__(self, path, source_bag, source: ReplaySource, action_cfg, label: str = '', settings=None):
        from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan
        self._types = (LatentTokens, Plan, ActionChunk)
        self.source_bag, self.source = source_bag, source
        self.action_cfg = action_cfg
        self.bag = BagWriter(path)
        self.bag.set_custom_data(SOURCE_KEY, os.path.abspath(source_bag))
        self.bag.set_custom_data(LABEL_KEY, label)
        self.bag.set_custom_data(SETTINGS_KEY, json.dumps(settings or {}, sort_keys=True))
        self._chunks = 0

    def _tokens_msg(self, tokens, stamp, header_frame, source, **fields):
        msg = self._types[0]()
        msg.header.stamp, msg.header.frame_id = stamp, header_frame
        msg.source = source
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        msg.shape = [int(s) for s in tokens.shape]
        msg.data = tokens.ravel()
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    def write_frame(self, out) -> None:
        frame = out.frame
        stamp = _stamp(frame.stamp_ns)
        proprio = np.asarray(frame.joint_positions if frame.joint_positions is not None else [], np.float32)
        tokens = self._tokens_msg(out.tokens, stamp, frame.frame_id, 'replay/perception',
                                  kept_indices=np.asarray(out.kept_indices, np.int32),
                                  grid_height=int(out.grid_hw[0]), grid_width=int(out.grid_hw[1]),
                                  keep_ratio=float(out.keep_ratio), reuse_ratio=float(out.reuse_ratio),
                                  is_keyframe=bool(out.is_keyframe), sequence=frame.index + 1, proprio=proprio,
                                  compute_time=float(out.perception_ms) / MS_PER_S)
        self.bag.write(f'{NAMESPACE}/perception/tokens', tokens, frame.log_ns)
        if out.plan is not None:
            meta = out.plan_meta
            plan = self._types[1](plan_id=int(meta.plan_id), planner_type=meta.planner_type,
                                  instruction=meta.instruction, subtask=out.plan.subtask,
                                  cache_hit=bool(meta.cache_hit), cache_hit_rate=float(meta.cache_hit_rate),
                                  latency=float(meta.latency_ms) / MS_PER_S)
            plan.header.stamp, plan.header.frame_id = stamp, 'plan'
            plan.plan_tokens = self._tokens_msg(out.plan.plan_tokens, stamp, 'plan', f'planner/{meta.planner_type}',
                                                plan_id=int(meta.plan_id), sequence=frame.index + 1,
                                                compute_time=float(meta.latency_ms) / MS_PER_S)
            self.bag.write(f'{NAMESPACE}/planner/plan', plan, frame.log_ns)
        if out.chunk is not None:
            self._chunks += 1
            chunk = self._types[2](chunk_id=self._chunks, horizon=int(out.chunk.shape[0]),
                                   action_dim=int(out.chunk.shape[1]), dt=float(self.action_cfg.action_dt),
                                   joint_names=list(self.action_cfg.joint_names), plan_id=int(out.plan_id),
                                   perception_sequence=frame.index + 1, inference_time=float(out.action_ms) / MS_PER_S,
                                   smoothing=self._types[2].SMOOTHING_NONE)
            chunk.header.stamp = stamp
            chunk.actions = out.chunk.astype(np.float32).ravel()
            self.bag.write(f'{NAMESPACE}/action/chunk', chunk, frame.log_ns)

    def copy_context(self) -> None:
        """Instruction and task status of the source, bytes and offered QoS unchanged."""
        wanted = {t for t in (self.source.instruction_topic, self.source.status_topic) if t}
        if not wanted:
            return
        with Reader(Path(self.source_bag)) as reader:
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn in conns:
                self.bag.add_topic(conn.topic, conn.msgtype, qos=list(conn.ext.offered_qos_profiles))
            for conn, log_ns, raw in reader.messages(connections=conns):
                self.bag.write(conn.topic, bytes(raw), log_ns)

    def close(self) -> None:
        self.bag.close()
