"""Launch the vla_ros stack on a ROS 2 install.

    ros2 launch vla_ros vla.launch.py planner:=vlm model_path:=/models/smolvlm record:=true
    ros2 launch vla_ros vla.launch.py use_sim:=false config:=/path/to/my_robot.yaml

Same nodes, same parameter file as `python -m vla_ros.bringup` (used where `launch`
is not installed). Topics are relative, so everything lives under `namespace`.
"""
import os
import time

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = (
    ('config', os.path.join(get_package_share_directory('vla_ros'), 'config', 'vla.yaml'),
     'ROS 2 params file for all nodes'),
    ('planner', 'lightweight', 'planner.type: lightweight | vlm'),
    ('model_path', '', 'planner.model_path (local transformers VLM checkpoint) for planner:=vlm'),
    ('encoder_path', '', 'perception.encoder_path (local transformers vision model); empty keeps the YAML value'),
    ('checkpoint', '', 'action.checkpoint_path; empty keeps the YAML value'),
    ('namespace', 'vla', 'namespace of every node and topic'),
    ('use_sim', 'true', 'start the simulated MuJoCo arm'),
    ('record', 'false', 'record a rosbag2 (MCAP) with the recorder node'),
    ('bag_dir', '', 'bag directory (default: ./vla_bag_<time>)'),
)


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    overrides = {'planner.type': arg['planner']}
    for key, name in (('planner.model_path', 'model_path'), ('perception.encoder_path', 'encoder_path'),
                      ('action.checkpoint_path', 'checkpoint')):
        if arg[name]:
            overrides[key] = arg[name]
    params = [arg['config'], overrides]
    common = dict(package='vla_ros', namespace=arg['namespace'], output='screen', emulate_tty=True)

    nodes = [
        Node(executable='perception_node', name='perception', parameters=params, **common),
        Node(executable='planner_node', name='planner', parameters=params, **common),
        Node(executable='action_node', name='action', parameters=params, **common),
    ]
    if arg['use_sim'].lower() == 'true':
        nodes.insert(0, Node(executable='sim_arm_node', name='sim_arm', parameters=params, **common))
    if arg['record'].lower() == 'true':
        bag_dir = arg['bag_dir'] or os.path.abspath(time.strftime('vla_bag_%Y%m%d_%H%M%S'))
        nodes.append(Node(executable='recorder_node', name='recorder',
                          parameters=[arg['config'], {'recorder.output_dir': bag_dir}], **common))
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc)
         for name, default, desc in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
