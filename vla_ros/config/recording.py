"""Bag recorder configuration."""
from dataclasses import dataclass

from vla_ros.config.base import param


@dataclass
class RecorderConfig:
    output_dir: str = param('runs/bag', 'rosbag2 output directory (must not exist)')
    storage: str = param('mcap', 'rosbag2 storage plugin', choices=('mcap', 'sqlite3'))
    record_images: bool = param(False, 'Also record camera images (large)')
