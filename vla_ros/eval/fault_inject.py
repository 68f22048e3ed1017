"""Fault catalogue and the message mutations the impairment relay applies (no ROS imports).

Each fault is injected on its own into a running closed loop (`python -m vla_ros.eval.faults`).
Message faults are applied by the relay node (vla_ros/nodes/fault_relay_node.py) that sits
between the sim arm / perception / planner and their consumers; process faults (kill, stall,
SIGINT) and operator faults (e-stop, instruction) are applied by the suite itself.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import numpy as np

NS_PER_S = 1_000_000_000

# Relayed streams: (topic as published, topic the consumers are remapped to, kind of message)
RELAYED: Tuple[Tuple[str, str, str], ...] = (
    ('camera/image_raw', 'relay/camera/image_raw', 'image'),
    ('joint_states', 'relay/joint_states', 'joint_state'),
    ('perception/tokens', 'relay/perception/tokens', 'tokens'),
    ('planner/plan', 'relay/planner/plan', 'plan'),
)
# Which node subscribes to which relayed topic (ROS remapping rules for that node only).
CONSUMERS: Dict[str, Tuple[str, ...]] = {
    'perception': ('camera/image_raw', 'joint_states'),
    'planner': ('perception/tokens',),
    'action': ('perception/tokens', 'planner/plan', 'joint_states'),
}
CONTROL_TOPIC = 'fault/inject'     # std_msgs/String carrying a RelayFault as JSON


@dataclasses.dataclass
class RelayFault:
    """What the relay does to messages while a fault is active (kind 'none' = pass through)."""
    kind: str = 'none'            # none | delay | loss | reorder | stamp | tokens | image | joints
    kinds: Tuple[str, ...] = ('image', 'joint_state', 'tokens', 'plan')   # message kinds affected
    delay_s: float = 0.0
    loss: float = 0.0
    stamp_offset_s: float = 0.0
    stamp_abs_ns: int = 0         # > 0: every affected stamp is set to this (1 = 1970)
    value: str = ''               # tokens: nan | inf | huge ; image: encoding | size | step | empty ;
    #                               joints: duplicate | missing
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> 'RelayFault':
        data = json.loads(text)
        data['kinds'] = tuple(data.get('kinds', cls.kinds))
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    what: str                     # one line for the table
    action: str                   # relay | kill | stall | estop | instruction | sigint
    target: str = ''              # node for kill/stall/sigint
    relay: Optional[RelayFault] = None
    duration_s: float = 3.0       # how long the fault is applied
    expect_hold: bool = True      # the arm must come to a hold while it lasts
    short: bool = False           # part of the CI short mode


def _r(**kw) -> RelayFault:
    return RelayFault(**kw)


FAULTS: Tuple[Fault, ...] = (
    Fault('kill_perception', 'kill -9 perception, restart after 1 s', 'kill', 'perception'),
    Fault('kill_planner', 'kill -9 planner, restart after 1 s', 'kill', 'planner', expect_hold=False),
    Fault('kill_action', 'kill -9 action node, restart after 1 s', 'kill', 'action', short=True),
    Fault('kill_sim_arm', 'kill -9 sim arm (robot driver), restart after 1 s', 'kill', 'sim_arm'),
    Fault('stall_planner', 'planner stopped (SIGSTOP) for 2 s', 'stall', 'planner', duration_s=2.0,
          expect_hold=False, short=True),
    Fault('stall_perception', 'perception stopped (SIGSTOP) for 2 s', 'stall', 'perception', duration_s=2.0),
    Fault('delay', 'all relayed inputs delayed 0.3 s', 'relay', relay=_r(kind='delay', delay_s=0.3),
          expect_hold=False),
    Fault('loss', '50 % of relayed messages lost', 'relay', relay=_r(kind='loss', loss=0.5), expect_hold=False),
    Fault('reorder', 'relayed messages swapped pairwise', 'relay', relay=_r(kind='reorder'), expect_hold=False),
    Fault('stamp_future', 'every input stamped 1 h ahead', 'relay', relay=_r(kind='stamp', stamp_offset_s=3600.0),
          short=True),
    Fault('stamp_past', 'every input stamped 10 s in the past', 'relay', relay=_r(kind='stamp', stamp_offset_s=-10.0)),
    Fault('stamp_1970', 'plan + tokens stamped 1970', 'relay',
          relay=_r(kind='stamp', stamp_abs_ns=1, kinds=('tokens', 'plan'))),
    Fault('clock_jump', 'sim host clock 30 s back (camera + joint states)', 'relay',
          relay=_r(kind='stamp', stamp_offset_s=-30.0, kinds=('image', 'joint_state'))),
    Fault('tokens_nan', 'perception tokens NaN', 'relay', relay=_r(kind='tokens', value='nan', kinds=('tokens',)),
          short=True),
    Fault('tokens_inf', 'perception tokens Inf', 'relay', relay=_r(kind='tokens', value='inf', kinds=('tokens',))),
    Fault('tokens_huge', 'perception tokens 1e30', 'relay', relay=_r(kind='tokens', value='huge', kinds=('tokens',))),
    Fault('image_encoding', 'images claim encoding yuv422', 'relay',
          relay=_r(kind='image', value='encoding', kinds=('image',))),
    Fault('image_size', 'images one row taller than their data', 'relay',
          relay=_r(kind='image', value='size', kinds=('image',))),
    Fault('image_step', 'images with a wrong row step', 'relay', relay=_r(kind='image', value='step', kinds=('image',))),
    Fault('image_empty', 'images with no data', 'relay', relay=_r(kind='image', value='empty', kinds=('image',)),
          short=True),
    Fault('instruction_100k', 'a 100 000-character instruction', 'instruction', expect_hold=False, short=True),
    Fault('joints_duplicate', 'joint_states with a duplicated joint name', 'relay',
          relay=_r(kind='joints', value='duplicate', kinds=('joint_state',)), short=True),
    Fault('joints_missing', 'joint_states without joint7', 'relay',
          relay=_r(kind='joints', value='missing', kinds=('joint_state',))),
    Fault('estop', 'e-stop pressed mid-motion, released after 2 s', 'estop', duration_s=2.0, short=True),
    Fault('sigint_recording', 'SIGINT to the recorder while everything runs', 'sigint', 'recorder',
          duration_s=0.0, expect_hold=False, short=True),
)
FAULTS_BY_NAME = {f.name: f for f in FAULTS}


def select(names: Optional[List[str]] = None, short: bool = False) -> List[Fault]:
    """Faults to run, in catalogue order; the recorder's SIGINT always comes last (it ends the bag)."""
    if names:
        unknown = [n for n in names if n not in FAULTS_BY_NAME]
        if unknown:
            raise ValueError(f'unknown faults {unknown}; known: {sorted(FAULTS_BY_NAME)}')
        chosen = [FAULTS_BY_NAME[n] for n in names]
    else:
        chosen = [f for f in FAULTS if f.short or not short]
    return sorted(chosen, key=lambda f: f.action == 'sigint')


# ---------------------------------------------------------------------------- message mutations
def shifted_stamp_ns(stamp_ns: int, fault: RelayFault) -> int:
    if fault.stamp_abs_ns > 0:
        return int(fault.stamp_abs_ns)
    return max(1, int(stamp_ns + fault.stamp_offset_s * NS_PER_S))


def token_values(size: int, value: str) -> np.ndarray:
    fill = {'nan': np.nan, 'inf': np.inf, 'huge': 1e30}[value]
    return np.full(int(size), fill, dtype=np.float32)


def mutate_image(msg, value: str) -> None:
    if value == 'encoding':
        msg.encoding = 'yuv422'
    elif value == 'size':
        msg.height = int(msg.height) + 1
    elif value == 'step':
        msg.step = int(msg.step) + 1
    elif value == 'empty':
        msg.data = b''
    else:
        raise ValueError(f'unknown image fault {value!r}')


def mutate_joint_names(names: List[str], positions: List[float], velocities: List[float],
                       value: str) -> Tuple[List[str], List[float], List[float]]:
    names, positions, velocities = list(names), list(positions), list(velocities)
    if value == 'duplicate' and len(names) >= 2:
        names[1] = names[0]
    elif value == 'missing' and names:
        names, positions = names[:-1], positions[:-1]
        velocities = velocities[:-1] if velocities else velocities
    elif value not in ('duplicate', 'missing'):
        raise ValueError(f'unknown joint fault {value!r}')
    return names, positions, velocities
