"""What `ros2 bag record` (rosbag2, MCAP storage) writes that the `rosbags` writer leaves out.

rosbags writes valid rosbag2 bags, but differently from rosbag2 in three places a ROS user sees:
- `ros_distro` in metadata.yaml and in the MCAP `rosbag2` metadata record is "rosbags";
  rosbag2 writes `$ROS_DISTRO` (our wheels are Kilted, so "kilted" when the variable is unset).
- rosbag2_storage_mcap gives every MCAP channel two metadata entries, `offered_qos_profiles` and
  `topic_type_hash` (the RIHS01 type description hash); rosbags writes only the first.
- rosbag2 stores the publishers' offered QoS profiles (from get_publishers_info_by_topic), which
  `ros2 bag play` republishes with; `qos_from_profile` converts rclpy's profiles losslessly.

`Rosbag2Writer` is rosbags' Writer with those differences removed; nothing here needs rclpy.
"""
from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path
from typing import Optional

import yaml
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import Channel, McapWriter, write_channel, write_string
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

# The ROS 2 wheels this project runs are Kilted; rosbag2 falls back to the environment's ROS_DISTRO.
DEFAULT_ROS_DISTRO = 'kilted'
# MCAP channel metadata keys rosbag2_storage_mcap writes (mcap_storage.cpp, create_topic).
CHANNEL_QOS_KEY = 'offered_qos_profiles'
CHANNEL_TYPE_HASH_KEY = 'topic_type_hash'
_NS_PER_S = 1_000_000_000


def ros_distro() -> str:
    """The distro name rosbag2 would write: $ROS_DISTRO, else the wheels' distro."""
    return os.environ.get('ROS_DISTRO', '').strip() or DEFAULT_ROS_DISTRO


def _qos_time(duration) -> QosTime:
    """rclpy Duration (or anything with .nanoseconds, or int ns) -> rmw_time_t-style (sec, nsec)."""
    ns = int(getattr(duration, 'nanoseconds', duration))
    sec, nsec = divmod(max(ns, 0), _NS_PER_S)
    return QosTime(sec, nsec)


def qos_from_profile(profile) -> Qos:
    """rclpy QoSProfile (e.g. TopicEndpointInfo.qos_profile) -> rosbags Qos, every policy kept.

    rclpy's policy enums carry rmw's names (KEEP_LAST, BEST_EFFORT, ...), which are rosbags'
    enum names too. Infinite durations stay rmw's RMW_DURATION_INFINITE (9223372036 s, 854775807 ns),
    which rosbag2 reads back as infinite.
    """
    return Qos(history=QosHistory[profile.history.name], depth=int(profile.depth),
               reliability=QosReliability[profile.reliability.name],
               durability=QosDurability[profile.durability.name],
               deadline=_qos_time(profile.deadline), lifespan=_qos_time(profile.lifespan),
               liveliness=QosLiveliness[profile.liveliness.name],
               liveliness_lease_duration=_qos_time(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def _with_distro(metadata_text: str, distro: str, wrapped: bool) -> str:
    data = yaml.safe_load(metadata_text)
    info = data['rosbag2_bagfile_information'] if wrapped else data
    info['ros_distro'] = distro
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)


class Rosbag2McapStorage(McapWriter):
    """rosbags' MCAP storage with rosbag2's channel metadata and ros_distro."""

    distro = DEFAULT_ROS_DISTRO

    def add_connection(self, connection, offered_qos_profiles: str) -> None:
        metadata = BytesIO()
        for key, value in ((CHANNEL_QOS_KEY, offered_qos_profiles), (CHANNEL_TYPE_HASH_KEY, connection.digest or '')):
            write_string(metadata, key)
            write_string(metadata, value)
        channel = Channel(connection.id, connection.msgtype, connection.topic,
                          connection.ext.serialization_format, metadata.getvalue())
        self.channels.append(channel)
        self.channel_stats[connection.id] = 0
        write_channel(self.chunk.bio, channel, self.schemas)

    def close(self, version: int, metadata: str) -> None:
        super().close(version, _with_distro(metadata, self.distro, wrapped=False).strip())


class Rosbag2Sqlite3Storage(Sqlite3Writer):
    """rosbags' sqlite3 storage with rosbag2's ros_distro (schema table and stored metadata)."""

    distro = DEFAULT_ROS_DISTRO

    def close(self, version: int, metadata: str) -> None:
        self.cursor.execute('UPDATE schema SET ros_distro = ?', (self.distro,))
        super().close(version, _with_distro(metadata, self.distro, wrapped=False).strip())


class Rosbag2Writer(Writer):
    """rosbags Writer whose bags carry what `ros2 bag record` writes (see the module docstring)."""

    STORAGE_PLUGINS = {StoragePlugin.MCAP: Rosbag2McapStorage, StoragePlugin.SQLITE3: Rosbag2Sqlite3Storage}

    def __init__(self, path, *, version: int, storage_plugin: StoragePlugin, distro: Optional[str] = None):
        super().__init__(path, version=version, storage_plugin=storage_plugin)
        self.distro = distro or ros_distro()

    def open(self) -> None:
        super().open()
        self.storage.distro = self.distro

    def close(self) -> None:
        super().close()
        meta = Path(self.metapath)
        tmp = meta.with_suffix('.yaml.tmp')
        tmp.write_text(_with_distro(meta.read_text(), self.distro, wrapped=True), 'utf8')
        tmp.replace(meta)
