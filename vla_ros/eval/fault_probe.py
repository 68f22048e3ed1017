"""The fault suite's observer node: what the arm did, what was commanded, what the nodes counted.

Subscribes (reliably) to the sim's joint states, the commanded trajectory, chunks, plans, task
status and /diagnostics, remembering receive time + identity of each message so the suite can
judge limits, hold/recover times and whether the bag holds everything; publishes the operator
faults (e-stop, instruction) and the relay's fault requests.
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String

from vla_ros.eval.fault_inject import CONTROL_TOPIC, RelayFault
from vla_ros.nodes.common import LATCHED_QOS, SENSOR_QOS, reliable_qos
from vla_ros.timing import stamp_to_ns
from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan, TaskStatus

# Reliable topics whose every message must reach the bag, and how one message is identified.
CHECKED_TOPICS = ('joint_states', 'action/chunk', 'planner/plan', 'task/status')
# Every tick's safe command with its tick time (best effort, so not among the checked topics).
COMMAND_TOPIC = 'action/command'


def message_key(topic: str, msg) -> tuple:
    stamp = stamp_to_ns(msg.header.stamp)
    if topic.endswith('action/chunk'):
        return (stamp, int(msg.chunk_id))
    if topic.endswith('planner/plan'):
        return (stamp, int(msg.plan_id))
    if topic.endswith('task/status'):
        return (stamp, int(msg.episode), bool(msg.done))
    return (stamp,)


class FaultProbe(Node):
    def __init__(self, joint_names: List[str], **kwargs):
        super().__init__('fault_probe', **kwargs)
        self.joint_names = list(joint_names)
        self._lock = threading.Lock()
        self.joint_states: List[tuple] = []     # (t, stamp_ns, positions, velocities)
        self.commands: List[tuple] = []         # (t, stamp_ns, positions)
        self.status: List[tuple] = []           # (t, episode, done, success, stamp_ns)
        self.keys: Dict[str, List[Tuple[float, tuple]]] = {t: [] for t in CHECKED_TOPICS}
        self.diagnostics: Dict[str, Dict[str, str]] = {}
        self.action_modes: List[Tuple[float, str]] = []   # (t, the action node's reported mode)
        self.token_times: List[float] = []                # perception tokens straight from perception
        depth = reliable_qos(1000)
        self.create_subscription(JointState, 'joint_states', self._on_js, depth)
        self.create_subscription(JointState, COMMAND_TOPIC, self._on_command, SENSOR_QOS)
        self.create_subscription(ActionChunk, 'action/chunk', lambda m: self._key('action/chunk', m), depth)
        self.create_subscription(Plan, 'planner/plan', lambda m: self._key('planner/plan', m), depth)
        self.create_subscription(TaskStatus, 'task/status', self._on_status, depth)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, reliable_qos(100))
        self.create_subscription(LatentTokens, 'perception/tokens', self._on_tokens, reliable_qos(10))
        self.fault_pub = self.create_publisher(String, CONTROL_TOPIC, reliable_qos())
        self.estop_pub = self.create_publisher(Bool, 'estop', reliable_qos())
        # Created now, empty: matched with the nodes long before the hostile instruction is sent (a writer
        # created at the fault could be withdrawn by forget_instruction before discovery delivered it).
        self._instruction_pub = self.create_publisher(String, 'instruction', LATCHED_QOS)

    def _key(self, topic: str, msg) -> None:
        with self._lock:
            self.keys[topic].append((time.monotonic(), message_key(topic, msg)))

    def _on_js(self, msg: JointState) -> None:
        t = time.monotonic()
        self._key('joint_states', msg)
        index = {n: i for i, n in enumerate(msg.name)}
        if not all(n in index for n in self.joint_names) or len(msg.velocity) != len(msg.name):
            return
        pos = [msg.position[index[n]] for n in self.joint_names]
        vel = [msg.velocity[index[n]] for n in self.joint_names]
        with self._lock:
            self.joint_states.append((t, stamp_to_ns(msg.header.stamp), pos, vel))

    def _on_command(self, msg: JointState) -> None:
        t = time.monotonic()
        index = {n: i for i, n in enumerate(msg.name)}
        if not all(n in index for n in self.joint_names):
            return
        with self._lock:
            self.commands.append((t, stamp_to_ns(msg.header.stamp), [msg.position[index[n]] for n in self.joint_names]))

    def _on_status(self, msg: TaskStatus) -> None:
        self._key('task/status', msg)
        with self._lock:
            self.status.append((time.monotonic(), int(msg.episode), bool(msg.done), bool(msg.success),
                                stamp_to_ns(msg.header.stamp)))

    def _on_tokens(self, msg: LatentTokens) -> None:
        with self._lock:
            self.token_times.append(time.monotonic())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        t = time.monotonic()
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            with self._lock:
                self.diagnostics[status.name] = values
                if status.name.endswith('/action') and 'mode' in values:
                    self.action_modes.append((t, values['mode']))

    # ------------------------------------------------------------------ injections
    def relay(self, fault: RelayFault) -> None:
        self.fault_pub.publish(String(data=fault.to_json()))

    def estop(self, active: bool) -> None:
        self.estop_pub.publish(Bool(data=bool(active)))

    def instruction(self, text: str) -> None:
        if self._instruction_pub is None:
            self._instruction_pub = self.create_publisher(String, 'instruction', LATCHED_QOS)
        self._instruction_pub.publish(String(data=text))

    def forget_instruction(self) -> None:
        """Withdraw the latched hostile instruction so a restarted node cannot receive it later."""
        if self._instruction_pub is not None:
            self.destroy_publisher(self._instruction_pub)
            self._instruction_pub = None

    def snapshot(self):
        with self._lock:
            return (list(self.joint_states), list(self.commands), list(self.status),
                    {k: list(v) for k, v in self.keys.items()}, {k: dict(v) for k, v in self.diagnostics.items()})

    def liveness(self):
        """(action node modes with receive times, receive times of perception tokens)."""
        with self._lock:
            return list(self.action_modes), list(self.token_times)

    def diagnostics_copy(self) -> Dict[str, Dict[str, str]]:
        with self._lock:
            return {k: dict(v) for k, v in self.diagnostics.items()}

    def last_command_time(self) -> float:
        with self._lock:
            return self.commands[-1][0] if self.commands else 0.0
