"""Launch the vla_ros stack on a ROS 2 install.

    ros2 launch vla_ros vla.launch.py                              # sim arm, demo models, trained head
    ros2 launch vla_ros vla.launch.py planner:=vlm model_path:=/models/SmolVLM-256M-Instruct record:=true
    ros2 launch vla_ros vla.launch.py use_sim:=false config:=/path/to/my_robot.yaml use_respawn:=false

The nodes, their parameters, remappings, namespace and supervision (required / respawn) come
from `vla_ros.stack`, the one description `python -m vla_ros.bringup` also runs, so this file
only translates it into launch actions. `ros2 launch vla_ros vla.launch.py --show-args` lists
the arguments.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_ros.stack import ARGUMENTS, BOOL_CHOICES, MAX_RESTARTS, STARTUP_CONFIG_ERROR, resolve


def _give_up_handler(node, action):
    """A respawnable node that cannot start (bad model path) or keeps dying shuts the launch down."""
    exits = []

    def on_exit(event, _context):
        exits.append(event.returncode)
        if event.returncode == STARTUP_CONFIG_ERROR:
            return [Shutdown(reason=f'{node.name} cannot start: a parameter names a missing model (see its log)')]
        if len(exits) > MAX_RESTARTS:
            return [Shutdown(reason=f'{node.name} exited {len(exits)} times (respawn limit {MAX_RESTARTS})')]
        return None

    return RegisterEventHandler(OnProcessExit(target_action=action, on_exit=on_exit))


def _nodes(context):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in ARGUMENTS}
    actions = []
    for node in resolve(values):
        action = Node(
            package='vla_ros', executable=node.spec.executable, name=node.name, namespace=node.namespace,
            parameters=[node.params_file] + ([node.overrides] if node.overrides else []),
            remappings=node.remappings, ros_arguments=['--log-level', node.log_level],
            respawn=node.respawn, respawn_delay=node.respawn_delay, respawn_max_retries=MAX_RESTARTS,
            on_exit=[Shutdown(reason=f'required node {node.name} exited')] if node.required else None,
            output='screen', emulate_tty=True)
        actions.append(action)
        if node.respawn:
            actions.append(_give_up_handler(node, action))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                                      # booleans are checked by resolve(), case-insensitively
                                      **({'choices': list(a.choices)} if a.choices not in ((), BOOL_CHOICES) else {}))
                for a in ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
