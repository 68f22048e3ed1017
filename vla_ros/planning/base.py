"""Planner interface shared by every slow-system implementation, plus the registry.

Whatever the planner, plan tokens leave with shape [num_plan_tokens, plan_token_dim] so the
action head never depends on which planner produced them.
"""
from __future__ import annotations

import abc
import dataclasses
import zlib
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from vla_ros.config.planning import PlannerConfig


@dataclasses.dataclass
class PlanRequest:
    instruction: str
    visual_tokens: np.ndarray                  # float32 [K, D] pruned perception tokens (K may be 0)
    kept_indices: Optional[np.ndarray] = None  # int32 [K] patch index of each token
    grid_hw: Tuple[int, int] = (0, 0)
    proprio: Optional[np.ndarray] = None       # float32 [J]
    stamp_ns: int = 0
    frame_id: int = 0


@dataclasses.dataclass
class PlanOutput:
    subtask: str
    plan_tokens: np.ndarray                    # float32 [num_plan_tokens, plan_token_dim]
    latency_ms: float = 0.0


class Planner(abc.ABC):
    """Turns an instruction plus the current scene tokens into sub-task text and plan tokens."""

    type_name = 'base'

    def __init__(self, cfg: PlannerConfig, visual_dim: int):
        self.cfg = cfg
        self.visual_dim = int(visual_dim)

    @abc.abstractmethod
    def plan(self, req: PlanRequest) -> PlanOutput:
        ...

    def check_output(self, out: PlanOutput) -> PlanOutput:
        """Enforce the planner-agnostic plan-token contract."""
        want = (self.cfg.num_plan_tokens, self.cfg.plan_token_dim)
        tokens = np.ascontiguousarray(out.plan_tokens, dtype=np.float32)
        if tokens.shape != want:
            raise ValueError(f'{type(self).__name__} produced plan tokens {tokens.shape}, expected {want}')
        if not np.all(np.isfinite(tokens)):
            raise ValueError(f'{type(self).__name__} produced non-finite plan tokens')
        out.plan_tokens = tokens
        return out


def stable_seed(*parts) -> int:
    """Seed derived from strings/ints that is identical across processes (unlike hash())."""
    return zlib.crc32('\x1f'.join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def seeded_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """Fixed random [in_dim, out_dim] projection scaled to roughly preserve vector norms."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(max(in_dim, 1))).astype(np.float32)


def pool_tokens(tokens: np.ndarray, max_tokens: int) -> np.ndarray:
    """Average consecutive tokens so at most `max_tokens` remain (order, hence coarse layout, kept)."""
    tokens = np.asarray(tokens, dtype=np.float32)
    if tokens.shape[0] <= max_tokens:
        return tokens
    groups = np.array_split(np.arange(tokens.shape[0]), max_tokens)
    return np.stack([tokens[g].mean(axis=0) for g in groups]).astype(np.float32)


_REGISTRY: Dict[str, Callable[[PlannerConfig, int], Planner]] = {}


def register_planner(name: str):
    def deco(factory):
        _REGISTRY[name] = factory
        return factory
    return deco


def make_planner(cfg: PlannerConfig, visual_dim: int) -> Planner:
    """Build the planner named by cfg.type (raises ValueError / OSError with a clear message)."""
    # Importing registers the implementations; done here so `base` stays import-light.
    from vla_ros.planning import lightweight, vlm  # noqa: F401
    if cfg.type not in _REGISTRY:
        raise ValueError(f'unknown planner.type {cfg.type!r}; available: {sorted(_REGISTRY)}')
    return _REGISTRY[cfg.type](cfg, visual_dim)
