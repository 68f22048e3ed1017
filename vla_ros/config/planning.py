"""Planner (slow system) configuration."""
from dataclasses import dataclass

from vla_ros.config.base import param

PLANNER_TYPES = ('lightweight', 'vlm')


@dataclass
class PlannerConfig:
    type: str = param('lightweight', 'Planner implementation; swap by parameter', choices=PLANNER_TYPES)
    model_path: str = param('', 'Local directory of a transformers VLM checkpoint (planner.type=vlm)')
    device: str = param('cpu', 'torch device for the planner', choices=('cpu', 'cuda'))
    rate_hz: float = param(2.0, 'How often the planner is asked for a plan', range=(0.01, 100.0))
    num_plan_tokens: int = param(8, 'Latent plan tokens exported per plan', range=(1, 4096))
    plan_token_dim: int = param(64, 'Dimension of exported plan tokens (projected)', range=(1, 65536))
    max_new_tokens: int = param(16, 'Max generated tokens for the sub-task text', range=(1, 4096))
    cache_enabled: bool = param(True, 'Reuse the last plan while instruction and scene are unchanged')
    cache_similarity: float = param(0.95, 'Scene-embedding cosine similarity needed for a cache hit',
                                    range=(0.0, 1.0))
    cache_timeout_s: float = param(5.0, 'A cached plan older than this is refreshed', range=(0.0, 3600.0))
    default_instruction: str = param('pick up the red cube and place it on the green target',
                                     'Instruction used until one arrives on the instruction topic')
