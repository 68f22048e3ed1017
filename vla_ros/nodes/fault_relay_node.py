"""Impairment relay for the fault-injection suite (vla_ros.eval.faults).

Relays camera images, joint states, perception tokens and plans from their topics to
`relay/<topic>`; the consumers are remapped onto the relayed topics. By default it passes every
message through unchanged; a RelayFault (JSON on `fault/inject`) makes it delay, drop, reorder
or corrupt messages (stamps, token values, image fields, joint names) until the next one.
The kernel here has no netem qdisc, so this node is how delay, loss and reordering are made.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Dict, List

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from vla_ros.eval.fault_inject import (CONTROL_TOPIC, RELAYED, RelayFault, mutate_image, mutate_joint_names,
                                       shifted_stamp_ns, token_values)
from vla_ros.nodes.common import SENSOR_QOS, DropCounter, ns_to_stamp, reliable_qos, spin_node, stamp_to_ns
from vla_ros_msgs.msg import LatentTokens, Plan

_TYPES = {'image': Image, 'joint_state': JointState, 'tokens': LatentTokens, 'plan': Plan}
_FLUSH_PERIOD_S = 0.002   # delayed messages are released with this granularity


class FaultRelayNode(Node):
    def __init__(self, **kwargs):
        super().__init__('fault_relay', **kwargs)
        self.drops = DropCounter(self.get_logger())
        self.fault = RelayFault()
        self._rng = np.random.default_rng(0)
        self._lock = threading.Lock()
        self._delayed: List[tuple] = []
        self._seq = itertools.count()
        self._held: Dict[str, object] = {}
        self.counts = {'relayed': 0, 'dropped': 0, 'mutated': 0}
        self._pubs = {}
        for src, dst, kind in RELAYED:
            qos = SENSOR_QOS if kind == 'image' else reliable_qos(50)
            self._pubs[src] = self.create_publisher(_TYPES[kind], dst, qos)
            self.create_subscription(_TYPES[kind], src, lambda m, s=src, k=kind: self._on_message(s, k, m),
                                     SENSOR_QOS if kind in ('image', 'joint_state') else reliable_qos(50))
        self.create_subscription(String, CONTROL_TOPIC, self._on_control, reliable_qos())
        # Runs only while delayed messages wait (a 500 Hz timer costs CPU the stack under test needs).
        self._flush_timer = self.create_timer(_FLUSH_PERIOD_S, self._flush)
        self._flush_timer.cancel()

    def _on_control(self, msg: String) -> None:
        try:
            fault = RelayFault.from_json(msg.data)
        except (ValueError, TypeError) as exc:
            self.drops.drop('bad_fault_request', str(exc))
            return
        with self._lock:
            self.fault = fault
            self._rng = np.random.default_rng(fault.seed)
            held, self._held = self._held, {}
            if fault.kind == 'delay' or self._delayed:
                self._flush_timer.reset()
        for src, m in held.items():     # nothing stays stuck when reordering ends
            self._publish(src, m)
        self.get_logger().info(f'relay fault: {msg.data}')

    def _on_message(self, src: str, kind: str, msg) -> None:
        fault = self.fault
        if fault.kind == 'none' or kind not in fault.kinds:
            self._publish(src, msg)
            return
        if fault.kind == 'loss':
            if self._rng.random() < fault.loss:
                self.counts['dropped'] += 1
                return
            self._publish(src, msg)
        elif fault.kind == 'delay':
            with self._lock:
                heapq.heappush(self._delayed, (time.monotonic() + fault.delay_s, next(self._seq), src, msg))
        elif fault.kind == 'reorder':
            with self._lock:
                previous = self._held.pop(src, None)
                if previous is None:
                    self._held[src] = msg
                    return
            self._publish(src, msg)
            self._publish(src, previous)
        else:
            self._mutate(kind, msg, fault)
            self.counts['mutated'] += 1
            self._publish(src, msg)

    @staticmethod
    def _mutate(kind: str, msg, fault: RelayFault) -> None:
        if fault.kind == 'stamp':
            msg.header.stamp = ns_to_stamp(shifted_stamp_ns(stamp_to_ns(msg.header.stamp), fault))
            if kind == 'plan':
                msg.plan_tokens.header.stamp = msg.header.stamp
        elif fault.kind == 'tokens':
            target = msg.plan_tokens if kind == 'plan' else msg
            target.data = token_values(len(target.data), fault.value)
        elif fault.kind == 'image':
            mutate_image(msg, fault.value)
        elif fault.kind == 'joints':
            msg.name, msg.position, msg.velocity = mutate_joint_names(msg.name, list(msg.position),
                                                                      list(msg.velocity), fault.value)

    def _publish(self, src: str, msg) -> None:
        try:
            self._pubs[src].publish(msg)
            self.counts['relayed'] += 1
        except Exception as exc:  # shutting down
            self.drops.drop('publish_error', f'{src}: {exc}')

    def _flush(self) -> None:
        now = time.monotonic()
        due: List[tuple] = []
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                due.append(heapq.heappop(self._delayed))
            if self.fault.kind != 'delay':          # delay ended: release the rest now
                due += [heapq.heappop(self._delayed) for _ in range(len(self._delayed))]
                self._flush_timer.cancel()
        for _, _, src, msg in due:
            self._publish(src, msg)


def main(args=None):
    spin_node(lambda: FaultRelayNode(), args, num_threads=2)


if __name__ == '__main__':
    main()
