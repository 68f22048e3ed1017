"""Topic names. All relative, so a node namespace (e.g. /vla) prefixes them."""
from dataclasses import dataclass

from vla_ros.config.base import param


@dataclass
class TopicsConfig:
    image: str = param('camera/image_raw', 'Camera image (sensor_msgs/Image), sensor-data QoS')
    joint_states: str = param('joint_states', 'Arm joint state (sensor_msgs/JointState)')
    instruction: str = param('instruction', 'Language instruction (std_msgs/String), transient-local')
    perception_tokens: str = param('perception/tokens', 'Pruned visual tokens (vla_ros_msgs/LatentTokens)')
    plan: str = param('planner/plan', 'Plan text + latent plan tokens (vla_ros_msgs/Plan)')
    replan: str = param('planner/replan', 'Request a fresh plan, bypassing the cache (std_msgs/Empty)')
    action_chunk: str = param('action/chunk', 'Action chunks (vla_ros_msgs/ActionChunk)')
    joint_command: str = param('arm/joint_command',
                               'Joint position command for a forward position controller '
                               '(std_msgs/Float64MultiArray)')
    joint_trajectory: str = param('arm/joint_trajectory', 'Joint command as trajectory_msgs/JointTrajectory')
    command_stamped: str = param('action/command', 'Every control tick\'s safe command with its tick time in '
                                 'header.stamp (sensor_msgs/JointState; for recording and timing analysis)')
    estop: str = param('estop', 'Emergency stop latch (std_msgs/Bool, true = stop)')
    task_status: str = param('task/status', 'Episode status (vla_ros_msgs/TaskStatus)')
