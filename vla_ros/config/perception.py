"""Perception node configuration: encoder, token pruning, temporal reuse, sync."""
from dataclasses import dataclass
from typing import List

from vla_ros.config.base import ConfigError, param

PRUNING_STRATEGIES = ('none', 'attention_topk', 'query', 'spatial_coverage')
OPS_CHOICES = ('auto', 'numpy', 'torch')
REFRESH_MODES = ('keyframe', 'staggered')


@dataclass
class PerceptionConfig:
    encoder_path: str = param('package://vla_ros/checkpoints/vision_encoder',
                              'Directory of a transformers vision model (save_pretrained layout): a path or a '
                              'package://<pkg>/<path> URI into a package share directory (default: the encoder trained '
                              'with the shipped action head)')
    device: str = param('cpu', 'torch device for the encoder', choices=('cpu', 'cuda'))
    torch_threads: int = param(0, 'torch intra-op threads for the encoder (0 = leave torch default)',
                               range=(0, 256))
    pruning: str = param('spatial_coverage', 'Token pruning strategy', choices=PRUNING_STRATEGIES)
    keep_ratio: float = param(0.5, 'Fraction of patch tokens kept after pruning', range=(0.01, 1.0))
    adaptive_budget: bool = param(False, 'Shrink the token budget when attention mass is concentrated')
    adaptive_mass: float = param(0.9, 'Adaptive budget: keep the fewest tokens holding this share of the '
                                      'pruning scores', range=(0.01, 1.0))
    min_tokens: int = param(8, 'Lower bound on kept tokens with an adaptive budget', range=(1, 100000))
    coverage_salient_fraction: float = param(0.5, 'spatial_coverage: share of the budget taken by the most '
                                                  'salient tokens (rest spread over the grid)', range=(0.0, 1.0))
    reuse_enabled: bool = param(True, 'Reuse cached patch features for static patches between frames')
    reuse_similarity: float = param(0.98, 'Similarity of raw patches (a.b / max(|a|^2,|b|^2)) above which a '
                                          'patch counts static', range=(0.0, 1.0))
    keyframe_interval: int = param(10, 'Recompute every patch every N frames (0 = never)', range=(0, 100000))
    refresh: str = param('keyframe', "How cached patches get refreshed every keyframe_interval frames: 'keyframe' "
                                     "= all at once on one frame; 'staggered' = positions p with p % interval == "
                                     "frame % interval on each frame (same refresh period, flat per-frame cost)",
                         choices=REFRESH_MODES)
    task_relevant_ratio: float = param(0.1, 'Fraction of tokens (most instruction-relevant) always recomputed',
                                       range=(0.0, 1.0))
    ops: str = param('auto', 'Where the per-frame pruning/reuse decisions run: numpy on the host, torch on the '
                             'encoder device, or auto (torch when device is cuda)', choices=OPS_CHOICES)
    cuda_graphs: bool = param(False, 'Capture the per-frame stages as CUDA graphs, one per token-count bucket '
                                     '(cuda + ops torch only; eager fallback is logged)')
    static_shapes: bool = param(False, 'Round token counts up to the buckets below (fixed shapes, so a few CUDA '
                                       'graphs cover every frame); off = exact counts (ops torch only)')
    keep_buckets: List[float] = param([0.125, 0.25, 0.375, 0.5, 0.75, 1.0],
                                      'static_shapes + adaptive_budget: kept-token count rounded up to the '
                                      'nearest of these fractions of the grid (the selection keeps that many)')
    recompute_buckets: List[float] = param([0.0625, 0.125, 0.25, 0.5, 1.0],
                                           'static_shapes: recomputed-token count padded up to the nearest of '
                                           'these fractions of the kept tokens (padding rows are masked out)')
    device_relevance: bool = param(True, 'ops torch: compute the colour relevance on the device from the uploaded '
                                         'frame, inside the selection graph (OpenCV HSV arithmetic, same values; '
                                         'not for pruning=query or adaptive_budget, which read it on the host)')
    speculative_bucket: bool = param(True, 'static_shapes + reuse (ops torch): run selection and encoder as one '
                                           'graph sized by the recent recompute counts; the count is checked at '
                                           'the frame\'s one sync and an overflow reruns the encoder at the '
                                           'right bucket (one host sync per frame instead of two)')
    compile_layers: bool = param(False, 'ops torch: run the encoder layers through torch.compile (inductor fusions '
                                        'of norms, residuals, activations around the matmuls) inside the captured '
                                        'graphs; meant for cuda, eager fallback logged')
    pinned_upload: bool = param(True, 'Upload camera frames from pinned host memory, non-blocking (cuda)')
    sync_slop_s: float = param(0.05, 'Max stamp difference for image/joint-state synchronisation',
                               range=(0.0, 10.0))
    sync_queue_size: int = param(10, 'Messages buffered per input for synchronisation', range=(1, 1000))
    max_input_age_s: float = param(1.0, 'Drop images older than this (clock now - header.stamp)',
                                   range=(0.0, 3600.0))
    max_rate_hz: float = param(15.0, 'Upper bound on processed frames per second (0 = every frame)',
                               range=(0.0, 1000.0))
    expected_width: int = param(0, 'Drop images of another width (0 = accept any size)', range=(0, 100000))
    expected_height: int = param(0, 'Drop images of another height (0 = accept any size)', range=(0, 100000))
    depth_max_m: float = param(3.0, 'Depth images (16UC1 mm / 32FC1 m) are scaled 0..depth_max_m to 0..255',
                               range=(0.001, 1000.0))
    joint_names: List[str] = param(['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6', 'joint7'],
                                   'Arm joints taken BY NAME from joint_states as proprioception, in order')
    max_instruction_chars: int = param(1000, 'Longer instructions are dropped (counted); the previous one stays',
                                       range=(1, 10000000))

    def validate(self):
        if self.pruning not in PRUNING_STRATEGIES:
            raise ConfigError(f'perception.pruning must be one of {PRUNING_STRATEGIES}')
        if self.refresh not in REFRESH_MODES:
            raise ConfigError(f'perception.refresh must be one of {REFRESH_MODES}')
        for name in ('keep_buckets', 'recompute_buckets'):
            if any(not 0.0 < float(f) <= 1.0 for f in getattr(self, name)):
                raise ConfigError(f'perception.{name}: every bucket must be a fraction in (0, 1]')
