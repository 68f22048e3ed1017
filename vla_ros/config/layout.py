"""Which config dataclass each node declares, under which parameter prefix.

Used to generate config/vla.yaml, by the bringup and by the tests that check every
node's parameters load from that file.
"""
from vla_ros.config.action import ActionConfig
from vla_ros.config.perception import PerceptionConfig
from vla_ros.config.planning import PlannerConfig
from vla_ros.config.recording import RecorderConfig
from vla_ros.config.sim import SimConfig
from vla_ros.config.timing import TimingConfig
from vla_ros.config.topics import TopicsConfig

# Parameters every node shares (ROS 2 '/**' wildcard section).
SHARED_SECTIONS = (('topics', TopicsConfig), ('timing', TimingConfig))

# node name -> (prefix, dataclass) declared by that node in addition to the shared ones.
NODE_SECTIONS = {
    'perception': (('perception', PerceptionConfig),),
    'planner': (('planner', PlannerConfig),),
    'action': (('action', ActionConfig),),
    'sim_arm': (('sim', SimConfig),),
    'recorder': (('recorder', RecorderConfig),),
}
