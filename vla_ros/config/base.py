"""Dataclass <-> flat parameter dict <-> YAML helpers shared by all subsystems."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Optional, Tuple

import yaml


class ConfigError(ValueError):
    """Raised for unknown keys, wrong types or out-of-range values."""


def parse_assignment(text: str, option: str = '--set', form: str = 'name=value') -> Tuple[str, Any]:
    """One 'key=value' override as the command lines take it -> (key, value parsed as YAML)."""
    if '=' not in text:
        raise ConfigError(f'{option} expects {form}, got {text!r}')
    key, raw = text.split('=', 1)
    return key.strip(), yaml.safe_load(raw)


def param(default: Any, description: str, range: Optional[Tuple[float, float]] = None,
          choices: Optional[Tuple[str, ...]] = None, read_only: bool = False):
    """Dataclass field carrying the ROS parameter descriptor information."""
    meta = {'description': description, 'range': range, 'choices': choices, 'read_only': read_only}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: list(d) if isinstance(d, list) else dict(d),
                                 metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field_types(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce_value(name: str, value: Any, typ: Any, meta: Dict[str, Any]) -> Any:
    """`value` as field type `typ` (an int where a float is declared becomes a float), checked against the
    field's range and choices; ConfigError when it cannot be."""
    origin = typing.get_origin(typ)
    if origin in (list, typing.List):
        (item_t,) = typing.get_args(typ) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{name}: expected a list, got {value!r}')
        return [coerce_value(f'{name}[]', v, item_t, {}) for v in value]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{name}: expected a bool, got {value!r}')
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{name}: expected an int, got {value!r}')
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{name}: expected a number, got {value!r}')
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f'{name}: expected a string, got {value!r}')
    rng = meta.get('range')
    if rng is not None and not (rng[0] <= value <= rng[1]):
        raise ConfigError(f'{name}: {value!r} outside [{rng[0]}, {rng[1]}]')
    choices = meta.get('choices')
    if choices is not None and value not in choices:
        raise ConfigError(f'{name}: {value!r} not one of {list(choices)}')
    return value


def config_from_dict(cls, values: Optional[Dict[str, Any]] = None, prefix: str = ''):
    """Build `cls` from a nested or dotted dict, validating types, ranges and choices."""
    values = dict(values or {})
    nested: Dict[str, Any] = {}
    for key, val in values.items():
        head, _, rest = key.partition('.')
        if rest:
            nested.setdefault(head, {})[rest] = val
        elif isinstance(val, dict):
            nested.setdefault(head, {}).update(val)
        else:
            nested[head] = val
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(nested) - known
    if unknown:
        raise ConfigError(f'unknown {cls.__name__} keys: {sorted(prefix + k for k in unknown)}')
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in nested:
            continue
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = config_from_dict(typ, nested[f.name], prefix + f.name + '.')
        else:
            kwargs[f.name] = coerce_value(prefix + f.name, nested[f.name], typ, dict(f.metadata))
    obj = cls(**kwargs)
    validate = getattr(obj, 'validate', None)
    if callable(validate):
        validate()
    return obj


def flatten_config(obj, prefix: str = '') -> Dict[str, Tuple[Any, Any, Dict[str, Any]]]:
    """Map dotted name -> (value, type, metadata) for every leaf field."""
    out = {}
    hints = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        if dataclasses.is_dataclass(val):
            out.update(flatten_config(val, prefix + f.name + '.'))
        else:
            out[prefix + f.name] = (val, hints[f.name], dict(f.metadata))
    return out


def config_to_dict(obj) -> Dict[str, Any]:
    return dataclasses.asdict(obj)


def load_node_params_yaml(path: str, node_name: str) -> Dict[str, Any]:
    """Read the ros__parameters a ROS 2 params file gives `node_name` ('/**' entries merged first)."""
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    merged: Dict[str, Any] = {}
    for key in ('/**', '**'):
        merged.update(_flatten_yaml((doc.get(key) or {}).get('ros__parameters', {})))
    for key, section in doc.items():
        bare = key.strip('/').split('/')[-1]
        if key not in ('/**', '**') and bare == node_name:
            merged.update(_flatten_yaml((section or {}).get('ros__parameters', {})))
    return merged


def _flatten_yaml(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten_yaml(v, prefix + k + '.'))
        else:
            out[prefix + k] = v
    return out
