"""Perception node: synchronised camera image + joint state in, pruned/reused visual tokens out.

All the vision work lives in vla_ros.perception.PerceptionPipeline; this node converts and checks
messages, keeps only the newest synchronised pair, and runs the pipeline in a worker thread at no
more than `perception.max_rate_hz`, so subscription callbacks never block on the encoder.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String

from vla_ros.config.perception import PerceptionConfig
from vla_ros.config.timing import TimingConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.nodes.common import (LATCHED_QOS, SENSOR_QOS, Diagnostics, DropCounter, reliable_qos, spin_node,
                                  tokens_to_msg)
from vla_ros.nodes.params import declare_config
from vla_ros.perception.encoder import VisionEncoder
from vla_ros.perception.image_conversion import ImageConversionError, image_msg_to_rgb
from vla_ros.perception.device_pipeline import make_pipeline
from vla_ros.perception.sync import make_image_joint_sync
from vla_ros.resources import resolve_path
from vla_ros.timing import StampGate, positions_by_name, stamp_to_ns
from vla_ros_msgs.msg import LatentTokens

WORKER_POLL_S = 0.1      # how often an idle worker re-checks the stop flag
TOKEN_QUEUE_DEPTH = 5


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__('perception', **kwargs)
        self.cfg: PerceptionConfig = declare_config(self, PerceptionConfig, 'perception')
        self.topics: TopicsConfig = declare_config(self, TopicsConfig, 'topics')
        self.timing: TimingConfig = declare_config(self, TimingConfig, 'timing')
        # A missing/unreadable model is a ResourceError naming perception.encoder_path: the node exits on it.
        path = resolve_path(self.cfg.encoder_path, 'perception.encoder_path', kind='dir', marker='config.json')
        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        self.encoder = VisionEncoder.from_pretrained(path, device=self.cfg.device)
        self.pipeline = make_pipeline(self.encoder, self.cfg)   # device ops on cuda (perception.ops)
        self.source = f'perception/{self.encoder.name}'
        self.drops = DropCounter(self.get_logger())
        self.gate = StampGate(self.cfg.max_input_age_s, self.timing.max_future_s, self.timing.clock_jump_s)
        self.get_logger().info(f'encoder {path} ({self.encoder.name}, grid {self.encoder.grid_hw}, '
                               f'dim {self.encoder.hidden_size}); pruning {self.cfg.pruning} '
                               f'keep {self.cfg.keep_ratio}, reuse {self.cfg.reuse_enabled}')

        self._cond = threading.Condition()
        self._pending: Optional[tuple] = None
        self._pending_instruction: Optional[str] = None
        self._stop = False
        self.frames = 0
        self.superseded = 0
        self._sum_keep = self._sum_reuse = self._sum_ms = 0.0
        self._last_ms = 0.0

        self._pub = self.create_publisher(LatentTokens, self.topics.perception_tokens,
                                          reliable_qos(TOKEN_QUEUE_DEPTH))
        inputs = MutuallyExclusiveCallbackGroup()
        self._sync = make_image_joint_sync(self, self.topics.image, self.topics.joint_states, SENSOR_QOS,
                                           SENSOR_QOS, self.cfg.sync_slop_s, self.cfg.sync_queue_size,
                                           self._on_pair, callback_group=inputs)
        self.create_subscription(String, self.topics.instruction, self._on_instruction, LATCHED_QOS,
                                 callback_group=inputs)
        self._diagnostics = Diagnostics(self, self._status, level_fn=self._level)
        self._worker = threading.Thread(target=self._run_worker, name='perception_worker', daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ inputs
    def _on_instruction(self, msg: String) -> None:
        if len(msg.data) > self.cfg.max_instruction_chars:
            self.drops.drop('instruction_too_long', f'{len(msg.data)} characters > '
                                                    f'{self.cfg.max_instruction_chars}; previous one kept')
            return
        with self._cond:
            self._pending_instruction = msg.data
            self._cond.notify()

    def _on_pair(self, image, joint_state) -> None:
        # Checked on arrival, in arrival order: a bad or mis-stamped pair is a counted drop even when a newer
        # pair would have superseded it before the worker got to it, and it never supersedes a good one.
        try:
            checked = self._check(image, joint_state)
        except Exception as exc:  # never let one message kill the input callbacks
            self.drops.drop('input_error', repr(exc))
            return
        if checked is None:
            return
        with self._cond:
            if self._pending is not None:
                self.superseded += 1          # only the newest frame matters
            self._pending = checked
            self._cond.notify()

    def _check(self, image, joint_state) -> Optional[tuple]:
        """(image, rgb, proprio) of a valid pair, or None after counting the drop with its reason."""
        stamp_ns = stamp_to_ns(image.header.stamp)
        reason = self.gate.check(stamp_ns, self.get_clock().now().nanoseconds)
        if reason is not None:
            self.drops.drop(reason, f'image stamp {stamp_ns}')
            return None
        cfg = self.cfg
        if (cfg.expected_width and image.width != cfg.expected_width) or \
                (cfg.expected_height and image.height != cfg.expected_height):
            self.drops.drop('wrong_size', f'{image.width}x{image.height}, expected '
                                          f'{cfg.expected_width}x{cfg.expected_height}')
            return None
        try:
            rgb = image_msg_to_rgb(image, cfg.depth_max_m)
        except ImageConversionError as exc:
            self.drops.drop(exc.reason, str(exc))
            return None
        try:  # proprioception BY NAME, in perception.joint_names order
            proprio = positions_by_name(joint_state.name, joint_state.position,
                                        self.cfg.joint_names).astype(np.float32)
        except ValueError as exc:
            self.drops.drop('bad_joint_state', str(exc))
            return None
        if not np.all(np.isfinite(proprio)):
            self.drops.drop('bad_joint_state', f'non-finite positions {proprio.tolist()}')
            return None
        return image, rgb, proprio

    # ------------------------------------------------------------------ worker
    def _run_worker(self) -> None:
        min_period = 1.0 / self.cfg.max_rate_hz if self.cfg.max_rate_hz > 0 else 0.0
        last_start = -float('inf')
        while True:
            with self._cond:
                while not self._stop and self._pending is None and self._pending_instruction is None:
                    self._cond.wait(WORKER_POLL_S)
                if self._stop:
                    return
                instruction, self._pending_instruction = self._pending_instruction, None
            if instruction is not None:
                self._apply_instruction(instruction)
            wait = last_start + min_period - time.monotonic()
            if wait > 0:
                time.sleep(wait)              # newer pairs replace the pending one meanwhile
            with self._cond:
                pair, self._pending = self._pending, None
            if pair is None:
                continue
            last_start = time.monotonic()
            try:
                self._process(*pair)
            except Exception as exc:  # never let one frame kill the worker
                self.drops.drop('pipeline_error', repr(exc))

    def _apply_instruction(self, text: str) -> None:
        if text == self.pipeline.instruction:
            return
        self.pipeline.set_instruction(text)
        self.pipeline.reset()                 # new task: next frame is a keyframe
        self.get_logger().info(f'instruction: {text!r}')

    def _process(self, image, rgb, proprio) -> None:
        result = self.pipeline.process(rgb)
        self.frames += 1
        msg = tokens_to_msg(result.tokens, stamp=image.header.stamp, frame_id=image.header.frame_id,
                            source=self.source, kept_indices=result.kept_indices, grid_hw=result.grid_hw,
                            keep_ratio=result.keep_ratio, reuse_ratio=result.reuse_ratio,
                            is_keyframe=result.is_keyframe, frame_counter=self.frames, proprio=proprio,
                            compute_ms=result.compute_ms)
        self._pub.publish(msg)
        self._sum_keep += result.keep_ratio
        self._sum_reuse += result.reuse_ratio
        self._sum_ms += result.compute_ms
        self._last_ms = result.compute_ms

    # ------------------------------------------------------------------ diagnostics / shutdown
    def _status(self):
        n = max(self.frames, 1)
        status = {'frames_processed': self.frames, 'frames_superseded': self.superseded,
                  'drops_total': self.drops.total, 'mean_keep_ratio': self._sum_keep / n,
                  'mean_reuse_ratio': self._sum_reuse / n, 'mean_compute_ms': self._sum_ms / n,
                  'last_compute_ms': self._last_ms, 'pruning': self.cfg.pruning,
                  'instruction': self.pipeline.instruction[:200], 'stamp_gate_resets': self.gate.resets}
        status.update({f'drops.{k}': v for k, v in sorted(self.drops.counts.items())})
        pairer = getattr(self._sync, 'pairer', None)     # images no joint state matched within sync_slop_s
        if pairer is not None:
            status['drops.sync_unmatched_image'] = pairer.dropped_images
        return status

    def _level(self):
        if self.frames == 0:
            return DiagnosticStatus.WARN, 'waiting for synchronised image + joint state'
        return DiagnosticStatus.OK, 'ok'

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout=5.0)


def main(args=None):
    spin_node(lambda: PerceptionNode(), args)


if __name__ == '__main__':
    main()
