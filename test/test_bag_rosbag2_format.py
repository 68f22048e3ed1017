"""Bags carry what `ros2 bag record` (Kilted, MCAP storage) writes, checked with an independent MCAP reader."""
import sqlite3

import pytest
import yaml

from vla_ros.eval.bag_io import BagWriter, bag_summary, read_bag
from vla_ros.eval.rosbag2_format import CHANNEL_QOS_KEY, CHANNEL_TYPE_HASH_KEY, qos_from_profile

rclpy_qos = pytest.importorskip('rclpy.qos')
mcap_reader = pytest.importorskip('mcap.reader')
from std_msgs.msg import String  # noqa: E402


def _profiles():
    latched = rclpy_qos.QoSProfile(depth=1, history=rclpy_qos.HistoryPolicy.KEEP_LAST,
                                   reliability=rclpy_qos.ReliabilityPolicy.RELIABLE,
                                   durability=rclpy_qos.DurabilityPolicy.TRANSIENT_LOCAL)
    return latched, rclpy_qos.qos_profile_sensor_data


def test_qos_conversion_keeps_every_policy():
    latched, sensor = _profiles()
    q = qos_from_profile(latched)
    assert (q.history.name, q.depth, q.reliability.name, q.durability.name) == \
        ('KEEP_LAST', 1, 'RELIABLE', 'TRANSIENT_LOCAL')
    s = qos_from_profile(sensor)
    assert (s.reliability.name, s.durability.name, s.depth) == ('BEST_EFFORT', 'VOLATILE', 5)
    # rclpy's default deadline is "infinite"/unset: zero stays zero, a real one is split into sec/nsec
    sensor_deadline = rclpy_qos.QoSProfile(depth=1, deadline=rclpy_qos.Duration(seconds=1, nanoseconds=250))
    assert tuple(qos_from_profile(sensor_deadline).deadline) == (1, 250)


def test_mcap_bag_has_rosbag2_metadata(tmp_path, monkeypatch):
    monkeypatch.delenv('ROS_DISTRO', raising=False)
    latched, sensor = _profiles()
    bag = tmp_path / 'bag'
    with BagWriter(bag) as writer:
        writer.add_topic('/vla/instruction', 'std_msgs/msg/String', qos=[latched, sensor])
        writer.write('/vla/instruction', String(data='touch the red cube'), 5)
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['ros_distro'] == 'kilted' and meta['version'] == 9
    topic = meta['topics_with_message_count'][0]['topic_metadata']
    assert topic['type_description_hash'].startswith('RIHS01_')
    offered = topic['offered_qos_profiles']
    assert [p['durability'] for p in offered] == ['transient_local', 'volatile']
    assert [p['reliability'] for p in offered] == ['reliable', 'best_effort']
    assert offered[0]['depth'] == 1

    with open(next(bag.glob('*.mcap')), 'rb') as fh:
        reader = mcap_reader.make_reader(fh)
        summary = reader.get_summary()
        (channel,) = summary.channels.values()
        assert channel.topic == '/vla/instruction' and channel.message_encoding == 'cdr'
        assert channel.metadata[CHANNEL_TYPE_HASH_KEY] == topic['type_description_hash']
        channel_qos = yaml.safe_load(channel.metadata[CHANNEL_QOS_KEY])
        assert [p['durability'] for p in channel_qos] == ['transient_local', 'volatile']
        assert summary.schemas[channel.schema_id].encoding == 'ros2msg'
        records = {m.name: m.metadata for m in reader.iter_metadata()}
        stored = yaml.safe_load(records['rosbag2']['serialized_metadata'])
        assert stored['ros_distro'] == 'kilted'
        assert [m.data for _, _, m in reader.iter_messages()]
    # rosbags still reads it, QoS included
    assert bag_summary(bag)['topics']['/vla/instruction']['count'] == 1
    assert [m.data for _, _, _, m in read_bag(bag)] == ['touch the red cube']


def test_ros_distro_follows_environment_and_sqlite3(tmp_path, monkeypatch):
    monkeypatch.setenv('ROS_DISTRO', 'rolling')
    bag = tmp_path / 'bag'
    with BagWriter(bag, storage='sqlite3') as writer:
        writer.write('/s', String(data='x'), 1)
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['ros_distro'] == 'rolling'
    with sqlite3.connect(next(bag.glob('*.db3'))) as conn:
        assert conn.execute('SELECT ros_distro FROM schema').fetchone()[0] == 'rolling'
        stored = yaml.safe_load(conn.execute('SELECT metadata FROM metadata').fetchone()[0])
    assert stored['ros_distro'] == 'rolling'
