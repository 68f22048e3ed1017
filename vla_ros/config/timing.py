"""Time rules shared by every node (see vla_ros/timing.py)."""
from dataclasses import dataclass

from vla_ros.config.base import param


@dataclass
class TimingConfig:
    max_future_s: float = param(0.5, 'Input stamps further ahead of this node\'s clock are dropped (counted as '
                                'future_stamp); allows for clock offset between hosts', range=(0.0, 3600.0))
    clock_jump_s: float = param(1.0, 'The node\'s clock going back by more than this (sim reset, /clock '
                                'restart, NTP step) resets every stamp gate', range=(0.001, 3600.0))
