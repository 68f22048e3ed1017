"""Typed configuration for the whole stack: one dataclass per subsystem.

Every field is mirrored as a declared ROS parameter (see `vla_ros.nodes.params`),
so the YAML in config/ is a plain ROS 2 parameter file that both `ros2 launch`
and the in-process bringup feed to the nodes. Field metadata carries the
parameter description and, for numbers, the allowed range.
"""
from vla_ros.config.base import (ConfigError, config_from_dict, config_to_dict, flatten_config,
                                 param, load_node_params_yaml)
from vla_ros.config.topics import TopicsConfig
from vla_ros.config.perception import PerceptionConfig
from vla_ros.config.planning import PlannerConfig
from vla_ros.config.action import ActionConfig, SafetyConfig
from vla_ros.config.sim import SimConfig
from vla_ros.config.recording import RecorderConfig

__all__ = [
    'ConfigError', 'config_from_dict', 'config_to_dict', 'flatten_config', 'param',
    'load_node_params_yaml', 'TopicsConfig', 'PerceptionConfig', 'PlannerConfig',
    'ActionConfig', 'SafetyConfig', 'SimConfig', 'RecorderConfig',
]
