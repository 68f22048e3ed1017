"""Simulated arm configuration."""
from dataclasses import dataclass

from vla_ros.config.base import param


@dataclass
class SimConfig:
    image_width: int = param(128, 'Rendered camera width (px)', range=(16, 4096))
    image_height: int = param(128, 'Rendered camera height (px)', range=(16, 4096))
    camera_rate_hz: float = param(15.0, 'Camera publish rate', range=(0.1, 1000.0))
    joint_state_rate_hz: float = param(100.0, 'JointState publish rate', range=(1.0, 2000.0))
    physics_rate_hz: float = param(500.0, 'Physics step rate', range=(10.0, 20000.0))
    episode_timeout_s: float = param(30.0, 'Episode ends unsuccessfully after this', range=(1.0, 3600.0))
    seed: int = param(0, 'Random seed for object placement', range=(0, 2**31 - 1))
