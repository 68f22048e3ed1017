"""Print a ROS 2 parameter file holding every node's defaults, with descriptions as comments.

    python -m vla_ros.config.dump > config/vla.yaml
    python -m vla_ros.config.dump --arm fr3 > config/arms/fr3.yaml     # a real-arm preset on top
"""
import argparse
import dataclasses
import sys
from typing import Dict, Optional

from vla_ros.config.arms import ARM_PRESETS
from vla_ros.config.tasks import TASK_PRESETS
from vla_ros.config.base import config_from_dict

from vla_ros.config.layout import NODE_SECTIONS, SHARED_SECTIONS

HEADER = """\
# vla_ros parameters (ROS 2 params file), generated from the dataclasses in vla_ros/config/
# by `python -m vla_ros.config.dump`. Used by launch/vla.launch.py and `python -m vla_ros.bringup`.
# Copy and edit it for your robot; every key is a declared parameter with a description
# (`ros2 param describe /vla/<node> <name>`).
"""


def _yaml_scalar(v):
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, str):
        return "''" if v == '' else repr(v) if any(c in v for c in ':#{}[],&*!|>%@`"\'') else v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return '[' + ', '.join(_yaml_scalar(x) for x in v) + ']'
    return str(v)


def _section(prefix, cls, indent, overrides=None):
    lines = []
    pad = ' ' * indent

    def emit(obj, path, depth):
        lines.append(f'{pad}{"  " * depth}{path}:')
        for f in dataclasses.fields(obj):
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(val):
                emit(val, f.name, depth + 1)
                continue
            desc = f.metadata.get('description', '')
            lines.append(f'{pad}{"  " * (depth + 1)}{f.name}: {_yaml_scalar(val)}  # {desc}')
    mine = {k[len(prefix) + 1:]: v for k, v in (overrides or {}).items() if k.startswith(prefix + '.')}
    emit(config_from_dict(cls, mine, prefix=prefix + '.'), prefix, 0)
    return lines


def render(arm: Optional[str] = None, task: Optional[str] = None) -> str:
    overrides: Dict[str, object] = dict(ARM_PRESETS[arm]) if arm else {}
    overrides.update(TASK_PRESETS[task] if task else {})
    header = HEADER + (f'# Preset for the {arm} arm (vla_ros/config/arms.py) on top of the defaults.\n' if arm else '')
    header += f'# Preset for the {task} task (vla_ros/config/tasks.py) on top of the defaults.\n' if task else ''
    out = [header, '/**:', '  ros__parameters:']
    for prefix, cls in SHARED_SECTIONS:
        out += _section(prefix, cls, 4, overrides)
    for node, sections in NODE_SECTIONS.items():
        out += ['', f'/**/{node}:', '  ros__parameters:']
        for prefix, cls in sections:
            out += _section(prefix, cls, 4, overrides)
    return '\n'.join(out) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description='Print the vla_ros params file')
    parser.add_argument('--arm', choices=sorted(ARM_PRESETS), default=None)
    parser.add_argument('--task', choices=sorted(TASK_PRESETS), default=None,
                        help='sim task preset (config/tasks/<task>.yaml)')
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.arm, args.task))


if __name__ == '__main__':
    main()
