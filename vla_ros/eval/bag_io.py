"""rosbag2 (MCAP or sqlite3) writing and reading through the `rosbags` library, without ROS.

The recorder node hands this module already-serialised ROS CDR bytes (exactly what rosbag2
stores), so writing never needs rclpy. Reading decodes with a rosbags typestore that also
knows our vla_ros_msgs types, parsed from their .msg files, so evaluation runs anywhere.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from rosbags.interfaces import Qos
from rosbags.rosbag2 import Reader, StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from vla_ros.eval.rosbag2_format import Rosbag2Writer, qos_from_profile

CUSTOM_PACKAGE = 'vla_ros_msgs'
# rosbag2 metadata version 9 is what Jazzy/Kilted's `ros2 bag` writes and reads.
BAG_VERSION = 9
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# Newest first: the wheels we run are ROS 2 Kilted, whose type hashes match this store.
_PREFERRED_STORES = ('ROS2_KILTED', 'ROS2_JAZZY', 'LATEST')
# The recorder's note of each publisher sequence gap, bag custom data key prefix (+ topic):
# JSON [[log time ns of the message after the gap, messages lost], ...].
RECORDER_LOSSES_KEY = 'vla_ros.recorder.sequence_gaps:'


class BagError(RuntimeError):
    pass


def normalize_msgtype(msgtype: str) -> str:
    """'pkg/Name' or 'pkg/msg/Name' -> 'pkg/msg/Name' (the rosbag2 spelling)."""
    parts = msgtype.strip('/').split('/')
    if len(parts) == 2:
        return f'{parts[0]}/msg/{parts[1]}'
    if len(parts) == 3:
        return '/'.join(parts)
    raise BagError(f'not a ROS message type name: {msgtype!r}')


def msgtype_of(msg_or_cls) -> str:
    """rosbag2 type name of an rclpy message instance or class, e.g. 'std_msgs/msg/String'."""
    cls = msg_or_cls if isinstance(msg_or_cls, type) else type(msg_or_cls)
    package = cls.__module__.split('.')[0]
    return f'{package}/msg/{cls.__name__}'


def custom_msg_dirs() -> List[Path]:
    """Where the vla_ros_msgs .msg files may live, most authoritative first."""
    dirs: List[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory(CUSTOM_PACKAGE)) / 'msg')
    except Exception:  # ament index absent or AMENT_PREFIX_PATH unset (plain venv)
        pass
    spec = importlib.util.find_spec(CUSTOM_PACKAGE)
    if spec is not None and spec.origin:
        # <prefix>/lib/pythonX.Y/site-packages/vla_ros_msgs/__init__.py -> <prefix>/share/vla_ros_msgs/msg
        prefix = Path(spec.origin).resolve().parents[4]
        dirs.append(prefix / 'share' / CUSTOM_PACKAGE / 'msg')
    dirs.append(Path(sys.prefix) / 'share' / CUSTOM_PACKAGE / 'msg')
    dirs.append(Path(__file__).resolve().parents[2] / CUSTOM_PACKAGE / 'msg')
    return dirs


def make_typestore(extra_msg_dirs: Sequence[os.PathLike] = ()):
    """Standard ROS 2 typestore plus the vla_ros_msgs types parsed from their .msg files."""
    store_enum = next(getattr(Stores, name) for name in _PREFERRED_STORES if hasattr(Stores, name))
    typestore = get_typestore(store_enum)
    for msg_dir in [Path(d) for d in extra_msg_dirs] + custom_msg_dirs():
        files = sorted(msg_dir.glob('*.msg')) if msg_dir.is_dir() else []
        if files:
            types = {}
            for path in files:
                types.update(get_types_from_msg(path.read_text(), f'{CUSTOM_PACKAGE}/msg/{path.stem}'))
            typestore.register(types)
            break
    return typestore


_DEFAULT_TYPESTORE = None


def default_typestore():
    global _DEFAULT_TYPESTORE
    if _DEFAULT_TYPESTORE is None:
        _DEFAULT_TYPESTORE = make_typestore()
    return _DEFAULT_TYPESTORE


class BagWriter:
    """Writes a new rosbag2 directory; messages are CDR bytes (or rclpy messages, serialised here).

    The bag carries what `ros2 bag record` writes for Kilted (vla_ros.eval.rosbag2_format):
    ros_distro, RIHS01 type hashes in metadata.yaml and in each MCAP channel, offered QoS profiles.

    Not thread-safe: the recorder funnels all writes through one writer thread.
    """

    def __init__(self, path: os.PathLike, storage: str = 'mcap', typestore=None, distro: Optional[str] = None):
        if storage not in STORAGES:
            raise BagError(f'storage {storage!r} not one of {sorted(STORAGES)}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; rosbag2 bags are never overwritten')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.typestore = typestore or default_typestore()
        self._writer = Rosbag2Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage], distro=distro)
        self._writer.open()
        self._connections: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}
        self.closed = False

    @property
    def topics(self) -> Dict[str, str]:
        return {name: conn.msgtype for name, conn in self._connections.items()}

    def add_topic(self, name: str, msgtype: str, qos=None) -> None:
        """Declare a topic; `qos` is one profile or a list (the publishers' offered profiles, as
        rosbag2 records them), each a rosbags Qos or an rclpy QoSProfile."""
        msgtype = normalize_msgtype(msgtype)
        if name in self._connections:
            if self._connections[name].msgtype != msgtype:
                raise BagError(f'topic {name} already recorded as {self._connections[name].msgtype}')
            return
        try:
            self.typestore.get_msgdef(msgtype)
        except Exception as exc:
            raise BagError(f'message type {msgtype} unknown to the typestore: {exc}') from exc
        if qos is None:
            profiles = []
        elif isinstance(qos, Qos) or not isinstance(qos, (list, tuple)):  # Qos is a NamedTuple
            profiles = [qos]
        else:
            profiles = list(qos)
        profiles = [p if isinstance(p, Qos) else qos_from_profile(p) for p in profiles]
        self._connections[name] = self._writer.add_connection(
            name, msgtype, typestore=self.typestore, offered_qos_profiles=profiles)
        self.counts[name] = 0

    def write(self, topic: str, message, log_time_ns: int) -> None:
        """Store one message; `message` is CDR bytes or an rclpy message (topic auto-added)."""
        if self.closed:
            raise BagError('bag already closed')
        if isinstance(message, (bytes, bytearray, memoryview)):
            data = message
        else:
            from rclpy.serialization import serialize_message  # only when given rclpy objects
            if topic not in self._connections:
                self.add_topic(topic, msgtype_of(message))
            data = exact_cdr(self.typestore, serialize_message(message), self._connections[topic].msgtype)
        if topic not in self._connections:
            raise BagError(f'topic {topic} not added before writing bytes to it')
        self._writer.write(self._connections[topic], int(log_time_ns), bytes(data))
        self.counts[topic] += 1

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, str(value))

    def close(self) -> None:
        """Finalise the storage file and write metadata.yaml (idempotent)."""
        if not self.closed:
            self.closed = True
            self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bag_summary(path: os.PathLike) -> Dict[str, object]:
    """Storage, duration and per-topic (type, count) from the bag's metadata."""
    import yaml
    meta = yaml.safe_load((Path(path) / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    with Reader(Path(path)) as reader:
        return {
            'storage': meta.get('storage_identifier'),
            'version': meta.get('version'),
            'message_count': reader.message_count,
            'start_time_ns': reader.start_time if reader.message_count else None,
            'duration_ns': reader.duration if reader.message_count else 0,
            'topics': {name: {'type': info.msgtype, 'count': info.msgcount}
                       for name, info in reader.topics.items()},
        }


def read_bag(path: os.PathLike, topics: Optional[Iterable[str]] = None, typestore=None,
             progress: bool = False, desc: str = '') -> Iterator[Tuple[str, str, int, object]]:
    """Yield (topic, msgtype, log_time_ns, decoded message) in log-time order.

    Messages of types the typestore cannot decode are skipped (counted in `read_bag.skipped`).
    """
    typestore = typestore or default_typestore()
    wanted = set(topics) if topics is not None else None
    with Reader(Path(path)) as reader:
        typestore = typestore_for_bag(reader, typestore)
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        decodable = [c for c in connections if _ensure_type(typestore, c)]
        total = sum(c.msgcount for c in decodable)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, desc=desc or Path(path).name, unit='msg', leave=False)
        try:
            for conn, log_time, raw in reader.messages(connections=decodable):
                if bar is not None:
                    bar.update(1)
                yield conn.topic, conn.msgtype, int(log_time), decode_cdr(typestore, raw, conn.msgtype)
        finally:
            if bar is not None:
                bar.close()


def _hash_or_none(typestore, msgtype: str) -> Optional[str]:
    try:
        return typestore.hash_rihs01(msgtype)
    except Exception:  # type unknown to the store
        return None


def typestore_for_bag(reader, typestore):
    """`typestore`, unless the bag was recorded with other definitions of our message types (e.g. before a
    message change): then a store with the standard types plus the definitions embedded in the bag, so
    old bags still decode field by field as they were written."""
    stale = [c for c in reader.connections if c.msgtype.startswith(CUSTOM_PACKAGE + '/') and c.digest
             and _hash_or_none(typestore, c.msgtype) not in (None, c.digest)]
    if not stale:
        return typestore
    store_enum = next(getattr(Stores, name) for name in _PREFERRED_STORES if hasattr(Stores, name))
    store = get_typestore(store_enum)
    for conn in sorted(reader.connections, key=lambda c: c.msgtype != 'vla_ros_msgs/msg/LatentTokens'):
        _ensure_type(store, conn)      # nested LatentTokens first, then the messages embedding it
    return store


def _decode_prefix(typestore, raw, msgtype):
    """(message, bytes used) decoding a CDR buffer that may carry trailing bytes."""
    msgdef = typestore.get_msgdef(msgtype)
    little_endian = bool(raw[1])
    func = msgdef.deserialize_cdr_le if little_endian else msgdef.deserialize_cdr_be
    message, pos = func(memoryview(raw)[4:], 0, msgdef.cls, typestore)
    return message, pos + 4


def exact_cdr(typestore, raw: bytes, msgtype: str) -> bytes:
    """Trim the slack rclpy's serialize_message leaves after the payload.

    rmw_fastrtps sizes that buffer from an estimate (e.g. a JointTrajectory comes out 12 bytes
    long), while messages taken from DDS are exact; rosbags' strict reader rejects the slack.
    """
    _, used = _decode_prefix(typestore, raw, msgtype)
    return bytes(raw[:used]) if used < len(raw) else bytes(raw)


def decode_cdr(typestore, raw, msgtype: str):
    """Decode CDR bytes, tolerating trailing slack from bags written by other tools."""
    try:
        return typestore.deserialize_cdr(raw, msgtype)
    except Exception:
        return _decode_prefix(typestore, raw, msgtype)[0]


def _ensure_type(typestore, connection) -> bool:
    """Make the type decodable, registering it from the definition embedded in the bag if needed."""
    try:
        typestore.get_msgdef(connection.msgtype)
        return True
    except Exception:
        pass
    msgdef = getattr(connection, 'msgdef', None)
    text = getattr(msgdef, 'data', '') if msgdef is not None else ''
    if not text or '\nIDL: ' in text:
        return False
    try:  # 'ros2msg' schema: main definition, then '=====\nMSG: pkg/Name' sections for dependencies
        types = {}
        sections = text.split('=' * 80 + '\n')
        types.update(get_types_from_msg(sections[0], connection.msgtype))
        for section in sections[1:]:
            header, _, body = section.partition('\n')
            if header.startswith('MSG: '):
                types.update(get_types_from_msg(body, normalize_msgtype(header[5:].strip())))
        typestore.register(types)
        typestore.get_msgdef(connection.msgtype)
        return True
    except Exception:
        return False
