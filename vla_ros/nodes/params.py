"""Mirror a config dataclass as declared ROS parameters (with descriptors) and read it back."""
from __future__ import annotations

import typing

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from vla_ros.config.base import config_from_dict, flatten_config

_ARRAY_TYPES = {
    str: (Parameter.Type.STRING_ARRAY, ParameterType.PARAMETER_STRING_ARRAY),
    float: (Parameter.Type.DOUBLE_ARRAY, ParameterType.PARAMETER_DOUBLE_ARRAY),
    int: (Parameter.Type.INTEGER_ARRAY, ParameterType.PARAMETER_INTEGER_ARRAY),
    bool: (Parameter.Type.BOOL_ARRAY, ParameterType.PARAMETER_BOOL_ARRAY),
}
_SCALAR_TYPES = {
    str: ParameterType.PARAMETER_STRING,
    float: ParameterType.PARAMETER_DOUBLE,
    int: ParameterType.PARAMETER_INTEGER,
    bool: ParameterType.PARAMETER_BOOL,
}


def _descriptor(name, typ, meta) -> ParameterDescriptor:
    desc = ParameterDescriptor(name=name, description=meta.get('description', ''),
                               read_only=bool(meta.get('read_only', False)))
    origin = typing.get_origin(typ)
    if origin in (list, typing.List):
        (item_t,) = typing.get_args(typ)
        desc.type = _ARRAY_TYPES[item_t][1]
    else:
        desc.type = _SCALAR_TYPES[typ]
    rng = meta.get('range')
    if rng is not None:
        if typ is int:
            desc.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=0)]
        elif typ is float:
            desc.floating_point_range = [FloatingPointRange(from_value=float(rng[0]),
                                                            to_value=float(rng[1]), step=0.0)]
    choices = meta.get('choices')
    if choices:
        desc.additional_constraints = 'one of: ' + ', '.join(choices)
    return desc


def declare_config(node: Node, cls, prefix: str):
    """Declare every field of `cls` as `<prefix>.<field>` and return the validated config.

    Values come from the node's parameter overrides (a params YAML file, launch arguments or
    `parameter_overrides`), defaults from the dataclass. Invalid values raise ConfigError.
    """
    defaults = flatten_config(cls())
    values = {}
    for name, (default, typ, meta) in defaults.items():
        full = f'{prefix}.{name}' if prefix else name
        desc = _descriptor(full, typ, meta)
        is_list = typing.get_origin(typ) in (list, typing.List)
        if is_list and not default:
            (item_t,) = typing.get_args(typ)
            node.declare_parameter(full, _ARRAY_TYPES[item_t][0], desc)
            try:
                value = node.get_parameter(full).value
            except ParameterUninitializedException:  # declared by type, no override given: empty
                value = None
            value = list(value) if value is not None else []
        else:
            value = node.declare_parameter(full, default, desc).value
            if is_list:
                value = list(value)
            elif typ is float and isinstance(value, int):
                value = float(value)
        values[name] = value
    return config_from_dict(cls, values, prefix=prefix + '.' if prefix else '')


class AtomicParameterService:
    """The standard parameter services, except that SetParameters is all-or-nothing.

    rclpy applies a SetParameters request (what `ros2 param set/load` and parameter clients send)
    one parameter at a time, so a request whose second value is rejected keeps the first one
    applied. Nodes whose parameters depend on each other (planner.type + planner.model_path) are
    created with `start_parameter_services=False` and use this instead: the whole request goes
    through one `set_parameters_atomically` call and every entry reports that call's result.
    """

    def __init__(self, node: Node):
        from rclpy.parameter_service import ParameterService

        class _Service(ParameterService):
            def _set_parameters_callback(self, request, response):
                from rcl_interfaces.msg import SetParametersResult
                from rclpy.exceptions import ParameterNotDeclaredException
                target = self._get_node()
                try:
                    result = target.set_parameters_atomically(
                        [Parameter.from_parameter_msg(p) for p in request.parameters])
                except ParameterNotDeclaredException as exc:
                    result = SetParametersResult(successful=False, reason=str(exc))
                response.results = [result for _ in request.parameters]
                return response

        self._service = _Service(node)
