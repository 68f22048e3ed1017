"""Bag recorder configuration."""
from dataclasses import dataclass

from vla_ros.config.base import param


@dataclass
class RecorderConfig:
    output_dir: str = param('runs/bag', 'rosbag2 output directory (must not exist)')
    storage: str = param('mcap', 'rosbag2 storage plugin', choices=('mcap', 'sqlite3'))
    record_images: bool = param(False, 'Also record camera images (needed for offline replay)')
    image_format: str = param('raw', 'How camera images are stored: raw sensor_msgs/Image on the camera topic, or '
                              'sensor_msgs/CompressedImage on <camera topic>/compressed (image_transport naming)',
                              choices=('raw', 'jpeg', 'png'))
    image_max_rate_hz: float = param(10.0, 'Most camera frames recorded per second (0 = every frame); the rest are '
                                     'skipped and counted', range=(0.0, 1000.0))
    image_jpeg_quality: int = param(90, 'JPEG quality when image_format is jpeg', range=(1, 100))
    custom_data: str = param('', 'JSON object of extra string key/values for the bag\'s custom_data '
                             '(e.g. what a replay was made from); empty = none')
    subscription_depth: int = param(200, 'History depth of each recording subscription', range=(1, 100000))
    max_queue: int = param(100000, 'Messages buffered for the writer thread before drops are counted',
                           range=(1, 10000000))
    discovery_period_s: float = param(0.5, 'How often to look for publishers (recording QoS follows theirs)',
                                      range=(0.01, 60.0))
    drain_timeout_s: float = param(2.0, 'At shutdown, keep taking messages DDS still holds for at most this long',
                                   range=(0.0, 60.0))
    drain_quiet_s: float = param(0.3, 'At shutdown, stop taking messages once none arrived for this long. '
                                 'A burst that overflowed a socket buffer is repaired at the writer\'s next '
                                 'heartbeat (Fast DDS: 3 s): set this (and drain_timeout_s) above that to keep it',
                                 range=(0.001, 60.0))
    receive_time: str = param('dds', 'Log time of each recorded message: dds = when DDS received it (the reception '
                              "timestamp its receive thread takes, like ros2 bag; independent of this Python "
                              "process's scheduling), callback = when the recorder's callback ran. Under "
                              'use_sim_time the callback time is used (ROS time)', choices=('dds', 'callback'))
    dds_fifo_priority: int = param(0, 'SCHED_FIFO priority for the recorder\'s middleware threads (receive '
                                   'threads, which take the reception timestamps), 0 = normal. Used when permitted, '
                                   'else logged; for timing measurements on a loaded machine (bench_control_loop)',
                                   range=(0, 99))
    diagnostics_period_s: float = param(1.0, 'Period of the recorder status on /diagnostics',
                                        range=(0.01, 60.0))
