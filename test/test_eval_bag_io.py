"""BagWriter/read_bag: real rclpy messages (custom vla_ros_msgs included) round-trip through rosbag2 MCAP."""
import json
import os
import sys

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_ros.eval.bag_io import BagError, BagWriter, bag_summary, msgtype_of, read_bag  # noqa: E402
from vla_ros.nodes.common import ns_to_stamp, tokens_to_msg  # noqa: E402
from vla_ros_msgs.msg import ActionChunk, Plan, TaskStatus  # noqa: E402


def _sample_messages():
    """Field values exactly representable in their wire types, so == after a round trip is exact."""
    rng = np.random.default_rng(3)
    tokens = tokens_to_msg(rng.standard_normal((5, 6)).astype(np.float32), stamp=ns_to_stamp(1_234_567_890_123),
                           frame_id='camera', source='perception/test', kept_indices=[0, 3, 4, 9, 11],
                           grid_hw=(3, 4), keep_ratio=0.375, reuse_ratio=0.5, is_keyframe=True,
                           frame_counter=77, proprio=[0.1, -0.2], compute_ms=2.5)
    plan = Plan(plan_id=9, planner_type='vlm', instruction='touch the red cube', subtask='reach', cache_hit=True,
                cache_hit_rate=0.625, latency=0.25e-3)
    plan.header.stamp = ns_to_stamp(42)
    plan.plan_tokens = tokens_to_msg(np.ones((2, 3), np.float32), stamp=plan.header.stamp, frame_id='',
                                     source='planner/vlm', plan_id=9)
    chunk = ActionChunk(chunk_id=4, horizon=3, action_dim=2, dt=0.0625, actions=np.arange(6, dtype=np.float32),
                        joint_names=['j1', 'j2'], plan_id=9, perception_sequence=77, inference_time=3.0e-3,
                        smoothing=ActionChunk.SMOOTHING_RTC)
    status = TaskStatus(episode=2, instruction='touch the red cube', success=True, done=True,
                        distance_to_goal=0.125, elapsed=4.5)
    trajectory = JointTrajectory(joint_names=['j1', 'j2'],
                                 points=[JointTrajectoryPoint(positions=[0.5, -0.25])])
    trajectory.header.stamp = ns_to_stamp(5_000_000_007)
    image = Image(height=2, width=3, encoding='rgb8', step=9, data=bytes(range(18)))
    diag = DiagnosticArray(status=[DiagnosticStatus(name='/vla/recorder', message='ok',
                                                    values=[KeyValue(key='received', value='12')])])
    return {
        '/vla/perception/tokens': tokens, '/vla/planner/plan': plan, '/vla/action/chunk': chunk,
        '/vla/task/status': status, '/vla/arm/joint_trajectory': trajectory,
        '/vla/arm/joint_command': Float64MultiArray(data=[0.5, -0.25]), '/vla/estop': Bool(data=True),
        '/vla/instruction': String(data='touch the red cube'),
        '/vla/joint_states': JointState(name=['j1'], position=[0.3], velocity=[0.0], effort=[]),
        '/vla/camera/image_raw': image, '/diagnostics': diag,
    }


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_rclpy_messages_roundtrip_through_bag(tmp_path, storage):
    messages = _sample_messages()
    bag_dir = tmp_path / 'bag'
    with BagWriter(bag_dir, storage=storage) as writer:
        for i, (topic, msg) in enumerate(messages.items()):
            if i % 2:  # the recorder path: CDR bytes from rclpy, topic declared first
                writer.add_topic(topic, msgtype_of(msg))
                writer.write(topic, serialize_message(msg), 1_000 + i)
            else:       # convenience path: rclpy message, serialised and declared by the writer
                writer.write(topic, msg, 1_000 + i)
        writer.write('/vla/task/status', messages['/vla/task/status'], 5_000)

    meta = yaml.safe_load((bag_dir / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['storage_identifier'] == storage
    assert (bag_dir / meta['relative_file_paths'][0]).is_file()
    assert meta['relative_file_paths'][0].endswith('.mcap' if storage == 'mcap' else '.db3')
    assert meta['message_count'] == len(messages) + 1

    summary = bag_summary(bag_dir)
    assert summary['topics']['/vla/task/status'] == {'type': 'vla_ros_msgs/msg/TaskStatus', 'count': 2}
    assert summary['topics']['/vla/planner/plan']['type'] == 'vla_ros_msgs/msg/Plan'

    decoded = {}
    times = []
    for topic, msgtype, log_ns, msg in read_bag(bag_dir):
        times.append(log_ns)
        decoded.setdefault(topic, (msgtype, log_ns, msg))
    assert times == sorted(times)
    assert set(decoded) == set(messages)
    for topic, (msgtype, _, _) in decoded.items():
        assert msgtype == msgtype_of(messages[topic])

    tok = decoded['/vla/perception/tokens'][2]
    src = messages['/vla/perception/tokens']
    np.testing.assert_array_equal(tok.data, np.asarray(src.data))
    assert list(tok.shape) == [5, 6] and list(tok.kept_indices) == [0, 3, 4, 9, 11]
    assert (tok.sequence, tok.grid_height, tok.grid_width, tok.is_keyframe) == (77, 3, 4, True)
    assert tok.header.stamp.sec == 1234 and tok.header.stamp.nanosec == 567_890_123
    assert tok.keep_ratio == 0.375 and tok.compute_time == pytest.approx(2.5e-3)
    plan = decoded['/vla/planner/plan'][2]
    assert (plan.plan_id, plan.subtask, plan.cache_hit, plan.plan_tokens.plan_id) == (9, 'reach', True, 9)
    np.testing.assert_array_equal(plan.plan_tokens.data, np.ones(6, np.float32))
    chunk = decoded['/vla/action/chunk'][2]
    np.testing.assert_array_equal(chunk.actions, np.arange(6, dtype=np.float32))
    assert list(chunk.joint_names) == ['j1', 'j2'] and chunk.smoothing == 'rtc'
    traj = decoded['/vla/arm/joint_trajectory'][2]
    assert list(traj.points[0].positions) == [0.5, -0.25] and traj.header.stamp.nanosec == 7
    assert bytes(decoded['/vla/camera/image_raw'][2].data) == bytes(range(18))
    assert decoded['/diagnostics'][2].status[0].values[0].value == '12'
    assert decoded['/vla/estop'][2].data is True


def test_bag_bytes_are_rosbag2_cdr_and_definitions_are_embedded(tmp_path):
    """What ros2 bag play / Foxglove need: rclpy can decode the stored bytes, hashes and schemas match."""
    messages = _sample_messages()
    bag_dir = tmp_path / 'bag'
    with BagWriter(bag_dir) as writer:
        for topic, msg in messages.items():
            writer.write(topic, msg, 10)
    with Reader(bag_dir) as reader:
        conns = {c.topic: c for c in reader.connections}
        for conn, _, raw in reader.messages():
            original = messages[conn.topic]
            assert deserialize_message(bytes(raw), type(original)) == original
    plan_conn = conns['/vla/planner/plan']
    # MCAP schema: full .msg text including the nested LatentTokens definition (Foxglove decodes from it).
    assert 'LatentTokens plan_tokens' in plan_conn.msgdef.data
    assert 'MSG: vla_ros_msgs/LatentTokens' in plan_conn.msgdef.data
    # Type hashes equal those rosidl generated for the installed package (ros2 bag play checks them).
    share = os.path.join(sys.prefix, 'share', 'vla_ros_msgs', 'msg')
    if not os.path.isdir(share):
        pytest.skip('vla_ros_msgs share directory not installed in this prefix')
    for name in ('LatentTokens', 'Plan', 'ActionChunk', 'TaskStatus'):
        with open(os.path.join(share, f'{name}.json')) as fh:
            generated = json.load(fh)['type_hashes'][0]['hash_string']
        conn = next(c for c in conns.values() if c.msgtype == f'vla_ros_msgs/msg/{name}')
        assert conn.digest == generated, name


def test_writer_refuses_existing_directory_and_unknown_types(tmp_path):
    (tmp_path / 'exists').mkdir()
    with pytest.raises(BagError):
        BagWriter(tmp_path / 'exists')
    writer = BagWriter(tmp_path / 'new')
    with pytest.raises(BagError):
        writer.add_topic('/x', 'no_such_pkg/msg/Nothing')
    with pytest.raises(BagError):
        writer.write('/not_added', b'\x00\x01\x00\x00', 1)
    writer.close()
    assert (tmp_path / 'new' / 'metadata.yaml').is_file()


OLD_TASK_STATUS = """std_msgs/Header header
uint32 episode
string instruction
bool success
bool done
float32 distance_to_goal
float32 elapsed_s
"""


def test_bags_recorded_with_older_message_definitions_still_decode(tmp_path):
    """A bag written before the message convention change decodes with its embedded definition."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from vla_ros.eval.metrics import extract_series
    old = get_typestore(Stores.ROS2_KILTED)
    old.register(get_types_from_msg(OLD_TASK_STATUS, 'vla_ros_msgs/msg/TaskStatus'))
    cls = old.types['vla_ros_msgs/msg/TaskStatus']
    header = old.types['std_msgs/msg/Header'](stamp=old.types['builtin_interfaces/msg/Time'](sec=1, nanosec=0),
                                              frame_id='')
    msg = cls(header=header, episode=3, instruction='touch the red cube', success=True, done=True,
              distance_to_goal=0.25, elapsed_s=4.5)
    with BagWriter(tmp_path / 'old', typestore=old) as writer:
        writer.add_topic('/vla/task/status', 'vla_ros_msgs/msg/TaskStatus')
        writer.write('/vla/task/status', old.serialize_cdr(msg, 'vla_ros_msgs/msg/TaskStatus'), 10)
    (_, _, _, back), = read_bag(tmp_path / 'old')
    assert (back.episode, back.elapsed_s, back.distance_to_goal) == (3, 4.5, 0.25)
    status, = extract_series(tmp_path / 'old').status
    assert status['elapsed_s'] == 4.5 and status['success']
