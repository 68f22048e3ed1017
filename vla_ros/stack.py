"""The vla_ros stack, described once.

Which nodes run, from which executable, with which parameters and remappings, in which
namespace, which of them are required (their exit stops the stack) and which may be respawned:
`launch/vla.launch.py` (ROS 2 launch) and `vla_ros.bringup` (the runner for machines without
`launch`) both build from `resolve()`, so the two ways of starting the stack cannot drift.

Supervision follows nav2's bringup: with `use_respawn` the respawnable nodes (perception,
planner) are restarted after `respawn_delay` seconds while the action node holds the arm (its
watchdog stops on stale tokens/plans) and resumes when they publish again; required nodes (the
action node, the arm) shut the whole stack down when they exit. Without `use_respawn`, every
node's exit shuts the stack down, so it never runs blind.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Mapping, Optional, Tuple

from vla_ros.config.base import ConfigError, coerce_value, flatten_config
from vla_ros.config.layout import NODE_SECTIONS, SHARED_SECTIONS
from vla_ros.config.tasks import POLICY_PATHS, TASK_PRESETS, TASKS
from vla_ros.resources import ResourceError, package_uri, resolve_path

PACKAGE = 'vla_ros'
# Respawns allowed per node before its exit shuts the stack down (launch's respawn_max_retries).
MAX_RESTARTS = 5
# Exit code of a node whose parameters name a missing/unreadable model: respawning cannot help.
STARTUP_CONFIG_ERROR = 2


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str                 # node name = its section in the params file
    executable: str           # console script (setup.py), installed as lib/vla_ros/<executable>
    module: str               # module whose main() the executable runs
    cls: str                  # rclpy Node subclass (in-process bringup)
    required: bool            # its exit shuts the whole stack down
    respawn: bool             # restarted after respawn_delay when use_respawn is true
    when: str = ''            # boolean launch argument that enables it ('' = always)
    remappings: Tuple[Tuple[str, str], ...] = ()


NODES: Tuple[NodeSpec, ...] = (
    NodeSpec('sim_arm', 'sim_arm_node', 'vla_ros.nodes.sim_arm_node', 'SimArmNode',
             required=True, respawn=False, when='use_sim'),
    NodeSpec('perception', 'perception_node', 'vla_ros.nodes.perception_node', 'PerceptionNode',
             required=False, respawn=True),
    NodeSpec('planner', 'planner_node', 'vla_ros.nodes.planner_node', 'PlannerNode',
             required=False, respawn=True),
    NodeSpec('action', 'action_node', 'vla_ros.nodes.action_node', 'ActionNode',
             required=True, respawn=False),
    # A respawned recorder would start a second bag; losing it must not stop the arm either.
    NodeSpec('recorder', 'recorder_node', 'vla_ros.nodes.recorder_node', 'RecorderNode',
             required=False, respawn=False, when='record'),
)
NODES_BY_NAME: Dict[str, NodeSpec] = {spec.name: spec for spec in NODES}


@dataclasses.dataclass(frozen=True)
class Argument:
    name: str
    default: str
    description: str
    choices: Tuple[str, ...] = ()


BOOL_CHOICES = ('true', 'false')
LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')

ARGUMENTS: Tuple[Argument, ...] = (
    Argument('config', package_uri('config/vla.yaml'), 'ROS 2 params file for all nodes (path or package:// URI)'),
    Argument('task', 'touch', 'sim task preset: touch = config as given; another task uses its params file '
             'config/tasks/<task>.yaml (sim task, gripper joint, its trained encoder + head) when config is the default',
             choices=TASKS),
    Argument('planner', 'lightweight', 'planner.type: the slow system', choices=('lightweight', 'vlm')),
    Argument('model_path', '', 'planner.model_path for planner:=vlm (local transformers VLM); empty keeps the '
             "params file's value (the demo VLM)"),
    Argument('encoder_path', '', "perception.encoder_path (local transformers vision model); empty keeps the params "
             "file's value (the demo encoder)"),
    Argument('checkpoint', '', "action.checkpoint_path (.pt); empty keeps the params file's value (the trained head)"),
    Argument('namespace', 'vla', 'namespace of every node and topic'),
    Argument('use_sim', 'true', 'start the simulated MuJoCo arm', choices=BOOL_CHOICES),
    Argument('record', 'false', 'record a rosbag2 (MCAP) with the recorder node', choices=BOOL_CHOICES),
    Argument('bag_dir', '', 'bag directory for record:=true (default: ./vla_bag_<time>)'),
    Argument('use_respawn', 'true', 'respawn perception/planner when they exit (else any exit stops the stack)',
             choices=BOOL_CHOICES),
    Argument('respawn_delay', '2.0', 'seconds before a node is respawned'),
    Argument('log_level', 'info', 'log level of every node', choices=LOG_LEVELS),
)
ARGUMENT_DEFAULTS: Dict[str, str] = {a.name: a.default for a in ARGUMENTS}

# launch argument -> parameter it overrides when non-empty
PATH_OVERRIDES = (('model_path', 'planner.model_path'), ('encoder_path', 'perception.encoder_path'),
                  ('checkpoint', 'action.checkpoint_path'))


class StackError(ValueError):
    """Launch arguments that do not describe a runnable stack."""


@dataclasses.dataclass
class ResolvedNode:
    spec: NodeSpec
    namespace: str
    params_file: str                  # the ROS 2 params file (absolute path)
    overrides: Dict[str, object]      # dotted parameter names owned by this node -> value (applied on top)
    remappings: List[Tuple[str, str]]
    respawn: bool
    respawn_delay: float
    required: bool
    log_level: str

    @property
    def name(self) -> str:
        return self.spec.name

    def ros_arguments(self) -> List[str]:
        """Arguments after `--ros-args` for a process that reads `params_file` (overrides are separate)."""
        args = ['--params-file', self.params_file, '-r', f'__ns:=/{self.namespace}', '-r', f'__node:={self.name}',
                '--log-level', self.log_level]
        for src, dst in self.remappings:
            args += ['-r', f'{src}:={dst}']
        return args


def _truthy(text: str, name: str) -> bool:
    value = str(text).strip().lower()
    if value not in BOOL_CHOICES:
        raise StackError(f'launch argument {name}:={text!r} must be true or false')
    return value == 'true'


SHARED = '*'


def owner_of(parameter: str) -> str:
    """The node declaring a dotted parameter ('planner.type' -> 'planner'), SHARED for every node's sections."""
    prefix = parameter.split('.', 1)[0]
    if prefix in {p for p, _ in SHARED_SECTIONS}:
        return SHARED
    for node, sections in NODE_SECTIONS.items():
        if prefix in {p for p, _ in sections}:
            return node
    known = sorted({p for s in NODE_SECTIONS.values() for p, _ in s} | {p for p, _ in SHARED_SECTIONS})
    raise StackError(f'no node declares parameters under {prefix!r} ({parameter}); known: {known}')


def typed_override(parameter: str, value: object) -> object:
    """A dotted override (the bringup's --set) checked against the dataclass that declares it and converted to
    its declared type, so `sim.episode_timeout_s=15` is the double rclpy expects, not an INTEGER that makes
    declare_parameter raise inside the node at start-up. StackError for unknown names or bad values."""
    prefix, _, rest = parameter.partition('.')
    owner_of(parameter)
    cls = dict(SHARED_SECTIONS + tuple(s for sections in NODE_SECTIONS.values() for s in sections))[prefix]
    fields = flatten_config(cls())
    if rest not in fields:
        raise StackError(f'{parameter}: {cls.__name__} has no parameter {rest!r}; known: {sorted(fields)}')
    _, typ, meta = fields[rest]
    try:
        return coerce_value(parameter, value, typ, meta)
    except ConfigError as exc:
        raise StackError(str(exc)) from None


def resolve(arguments: Optional[Mapping[str, str]] = None,
            extra_overrides: Optional[Mapping[str, object]] = None) -> List[ResolvedNode]:
    """Launch arguments (strings, as `ros2 launch` passes them) -> the nodes to run, in start order.

    extra_overrides: further dotted parameters (the bringup's --set); each goes to the node owning it.
    """
    unknown = set(arguments or {}) - set(ARGUMENT_DEFAULTS)
    if unknown:
        raise StackError(f'unknown launch arguments {sorted(unknown)}; known: {sorted(ARGUMENT_DEFAULTS)}')
    arg = {**ARGUMENT_DEFAULTS, **{k: str(v) for k, v in (arguments or {}).items()}}
    for a in ARGUMENTS:
        if a.choices and arg[a.name].strip().lower() not in a.choices:
            raise StackError(f'launch argument {a.name}:={arg[a.name]!r} must be one of {list(a.choices)}')
    flags = {name: _truthy(arg[name], name) for name in ('use_sim', 'record', 'use_respawn')}
    try:
        respawn_delay = float(arg['respawn_delay'])
    except ValueError:
        raise StackError(f"launch argument respawn_delay:={arg['respawn_delay']!r} is not a number") from None
    task = arg['task'].strip().lower()
    config = arg['config']
    if task != 'touch':
        if config != ARGUMENT_DEFAULTS['config']:
            raise StackError(f'task:={task} selects its own params file; pass config:= or task:=, not both')
        config = package_uri(f'config/tasks/{task}.yaml')
    params_file = resolve_path(config, 'config', kind='file')
    namespace = arg['namespace'].strip('/')

    overrides: Dict[str, object] = {'planner.type': arg['planner']}
    for name, parameter in PATH_OVERRIDES:
        if arg[name]:
            overrides[parameter] = arg[name]
    if flags['record']:
        overrides['recorder.output_dir'] = os.path.abspath(
            arg['bag_dir'] or time.strftime('vla_bag_%Y%m%d_%H%M%S'))
    overrides.update({k: typed_override(k, v) for k, v in (extra_overrides or {}).items()})
    for key, kind in POLICY_PATHS.items():       # a task's own policy, unless the launch names another
        path = TASK_PRESETS.get(task, {}).get(key)
        if path and key not in overrides:
            try:
                resolve_path(path, key, kind=kind)
            except ResourceError:
                raise StackError(f'task:={task}: its trained policy is not installed ({key} {path} is missing). '
                                 f'Train one: vla_train --task {task} --out-dir checkpoints/{task} '
                                 f'(checkpoints/README.md), or pass {key} (--set / launch argument)') from None

    nodes = []
    for spec in NODES:
        if spec.when and not flags[spec.when]:
            continue
        own = {k: v for k, v in overrides.items() if owner_of(k) in (spec.name, SHARED)}
        respawn = spec.respawn and flags['use_respawn']
        nodes.append(ResolvedNode(
            spec=spec, namespace=namespace, params_file=params_file, overrides=own,
            remappings=list(spec.remappings), respawn=respawn, respawn_delay=respawn_delay,
            # without respawn a dead perception/planner would leave the arm waiting forever: stop the stack
            required=spec.required or (spec.respawn and not respawn),
            log_level=arg['log_level'].lower()))
    return nodes
