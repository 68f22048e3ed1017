"""Configuration of `vla_train` (one dataclass; every field is also a command-line flag)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import List


@dataclass
class TrainConfig:
    # ---- where things go
    out_dir: str = field(default='checkpoints', metadata={'help': 'vision_encoder/, action_head.pt and '
                                                         'train_metrics.json are written here'})
    work_dir: str = field(default='runs/train', metadata={'help': 'scratch space (worker checkpoints)'})
    init_from: str = field(default='', metadata={'help': 'continue from a checkpoint directory (vision_encoder/ + '
                                                  'action_head.pt) instead of a fresh policy; one of another '
                                                  'arm or task (other joint count) is a warm start: encoder and '
                                                  'same-shape head weights copied'})
    task: str = field(default='touch', metadata={'help': 'sim task: touch or pick_place (vla_ros.config.tasks: '
                                                 'joints, gripper, expert)'})
    seed: int = field(default=0, metadata={'help': 'first demo seed; also the torch seed'})
    device: str = field(default='auto', metadata={'help': 'training device: auto, cpu or cuda'})
    workers: int = field(default=0, metadata={'help': 'parallel sim processes (0 = all CPU cores)'})
    # ---- expert demonstrations
    episodes: int = field(default=800, metadata={'help': 'scripted-expert episodes (seeds seed..seed+N-1)'})
    noise_levels: List[float] = field(default_factory=lambda: [0.0, 0.01, 0.02, 0.04],
                                      metadata={'help': 'DART noise std (rad) on executed targets; episode i '
                                                        'uses level i %% len; labels stay clean'})
    hold_steps: int = field(default=10, metadata={'help': 'decisions recorded after success'})
    max_steps: int = field(default=200, metadata={'help': 'cap on action steps (of action_dt) per expert episode'})
    decision_stride: int = field(default=1, metadata={'help': 'the expert decides and a sample is recorded every N '
                                                      'action steps (it executes its chunk in between, as the '
                                                      'policy at its inference rate); 2 = 10 Hz decisions for '
                                                      '0.05 s action steps, half the samples per episode'})
    # ---- vision encoder (a transformers SiglipVisionModel trained from scratch)
    image_size: int = field(default=128, metadata={'help': 'encoder input size (px), = sim image size'})
    patch_size: int = field(default=16, metadata={'help': 'encoder patch size (px)'})
    encoder_hidden: int = field(default=128, metadata={'help': 'encoder width = visual token dim'})
    encoder_layers: int = field(default=4, metadata={'help': 'encoder transformer layers'})
    encoder_heads: int = field(default=4, metadata={'help': 'encoder attention heads'})
    # ---- action head
    head_hidden: int = field(default=128, metadata={'help': 'flow head width'})
    head_layers: int = field(default=3, metadata={'help': 'flow head decoder layers'})
    head_memory_layers: int = field(default=2, metadata={'help': 'flow head self-attention layers over the '
                                                         'conditioning tokens (vision tokens read the plan)'})
    colour_aux_weight: float = field(default=0.5, metadata={'help': 'weight of the auxiliary per-token cube-colour '
                                                            'loss on the encoder (training only)'})
    target_aux_weight: float = field(default=0.0, metadata={'help': 'weight of the auxiliary loss that predicts the '
                                                            'named cube and the goal position (m) from the '
                                                            "head's proprio token after it attended to vision "
                                                            'and plan (training only; sim ground truth)'})
    keep_tokens: List[int] = field(default_factory=lambda: [32, 32, 32, 64],
                                   metadata={'help': 'token counts sampled per batch (pruned 32 of 64 as the '
                                                     'default perception config, 64 = pruning off)'})
    plan_staleness: int = field(default=40, metadata={'help': 'plan tokens come from a frame up to N decisions '
                                                      'earlier (the planner runs slower and caches plans)'})
    observation_lag_s: float = field(default=0.0, metadata={'help': 'visual tokens come from a frame up to this many '
                                                         'seconds older (uniform) than the joint positions and '
                                                         'the expert labels of a sample: in the ROS stack '
                                                         'perception and transport lag the proprioception '
                                                         '(0 = the frame of the decision)'})
    # ---- optimisation
    epochs: int = field(default=30, metadata={'help': 'epochs on the expert data'})
    batch_size: int = field(default=256, metadata={'help': 'samples per step'})
    lr: float = field(default=6e-4, metadata={'help': 'peak learning rate (AdamW, cosine)'})
    weight_decay: float = field(default=1e-4, metadata={'help': 'AdamW weight decay'})
    bf16: bool = field(default=True, metadata={'help': 'bf16 autocast on CUDA (false: float32 with TF32 matmuls)'})
    ema_decay: float = field(default=0.0, metadata={'help': 'keep an exponential moving average of the weights '
                                                    '(per step) and end each training phase on it, unless the '
                                                    'phase diverged (0 = off; 0.999 is typical)'})
    aug_shift_px: float = field(default=3.0, metadata={'help': 'random image translation (px)'})
    aug_colour: float = field(default=0.1, metadata={'help': 'brightness/contrast jitter (fraction)'})
    aug_noise: float = field(default=0.02, metadata={'help': 'pixel noise std (of 1.0)'})
    # ---- DAgger
    dagger_rounds: int = field(default=1, metadata={'help': 'rounds of policy rollouts relabelled by the expert'})
    dagger_episodes: int = field(default=240, metadata={'help': 'policy episodes per DAgger round'})
    dagger_epochs: int = field(default=12, metadata={'help': 'epochs on the aggregated data after each round'})
    dagger_lr: float = field(default=0.0, metadata={'help': 'peak learning rate of each DAgger training phase '
                                                    '(0 = --lr); lower than --lr fine-tunes the trained policy'})
    dagger_seed: int = field(default=50000, metadata={'help': 'first seed of the DAgger rollouts'})
    # ---- closed-loop evaluation (no ROS) on held-out seeds
    eval_episodes: int = field(default=100, metadata={'help': 'held-out closed-loop episodes after training'})
    eval_seed: int = field(default=100000, metadata={'help': 'first held-out seed (never used in training)'})
    rollout_observation_delay_s: float = field(default=0.0, metadata={'help': 'observation delay (sim s) of the '
                                                                   'DAgger rollouts and the closed-loop '
                                                                   'evaluation: a frame reaches the control loop '
                                                                   'this much later (evaluate_policy)'})
    rollout_inference_delay_s: float = field(default=0.0, metadata={'help': 'action-head delay (sim s) of the DAgger '
                                                                 'rollouts and the closed-loop evaluation: each '
                                                                 'chunk takes over this much after its inputs, one '
                                                                 'inference at a time (evaluate_policy)'})
    rollout_smoothing: str = field(default='', metadata={'help': 'action.smoothing of the DAgger rollouts and the '
                                                         'closed-loop evaluation: none (naive: each new chunk '
                                                         "takes over) | ensemble | rtc ('' = the task preset's)"})
    rollout_plan_cache: bool = field(default=False, metadata={'help': 'DAgger rollouts and the closed-loop evaluation '
                                                            'plan through the plan cache, as the planner node '
                                                            "does (PlannerConfig's cache settings)"})
    perception_set: str = field(default='', metadata={'help': 'PerceptionConfig overrides of the DAgger rollouts '
                                                      'and the closed-loop evaluation, comma-separated '
                                                      'name=value (e.g. keep_ratio=1.0,pruning=none)'})
    eval_only: bool = field(default=False, metadata={'help': 'no demos, no training: evaluate the checkpoint in '
                                                     '--init-from (else --out-dir) on the held-out seeds'})
    episode_timeout_s: float = field(default=20.0, metadata={'help': 'closed-loop episode timeout (sim s)'})
    train_budget_s: float = field(default=0.0, metadata={'help': 'wall-clock cap on training on the expert data '
                                                         '(0 = epochs only)'})
    dagger_train_budget_s: float = field(default=0.0, metadata={'help': 'wall-clock cap on each DAgger training '
                                                                'phase (0 = epochs only)'})
    time_budget_s: float = field(default=0.0, metadata={'help': 'skip further DAgger rounds once training has '
                                                        'run this long (0 = no limit)'})
    divergence_factor: float = field(default=1.5, metadata={'help': 'a training phase whose last epoch loss exceeds '
                                                            'this x its best epoch loss has diverged: its best '
                                                            "epoch's weights are restored (0 = never)"})
    checkpoint_every_s: float = field(default=0.0, metadata={'help': 'also save the policy to out_dir every N s of '
                                                             'training (0 = only at the end), so a run cut short '
                                                             'by a time limit keeps its progress'})
    progress: bool = field(default=True, metadata={'help': 'progress bars'})

    def validate(self) -> None:
        from vla_ros.config.tasks import TASKS
        if self.task not in TASKS:
            raise ValueError(f'task must be one of {TASKS}')
        if self.image_size % self.patch_size:
            raise ValueError('image_size must be a multiple of patch_size')
        grid = (self.image_size // self.patch_size) ** 2
        if not self.keep_tokens or any(k < 1 or k > grid for k in self.keep_tokens):
            raise ValueError(f'keep_tokens must be in 1..{grid}')
        if self.decision_stride < 1:
            raise ValueError('decision_stride must be >= 1')
        if self.episodes < 1 or self.epochs < 0 or self.batch_size < 1:
            raise ValueError('episodes and batch_size must be positive, epochs >= 0')
        if self.observation_lag_s < 0 or self.rollout_observation_delay_s < 0 or self.rollout_inference_delay_s < 0:
            raise ValueError('observation_lag_s, rollout_observation_delay_s and rollout_inference_delay_s must be >= 0')
        if self.rollout_smoothing:
            from vla_ros.config import ActionConfig
            from vla_ros.config.base import config_from_dict
            config_from_dict(ActionConfig, {'smoothing': self.rollout_smoothing}, 'action.')

        self.perception_overrides()           # unknown names and bad values fail before any work

    def perception_overrides(self) -> dict:
        """--perception-set as a dict of validated PerceptionConfig values."""
        from vla_ros.config import PerceptionConfig
        from vla_ros.config.base import config_from_dict, parse_assignment

        out = dict(parse_assignment(item, '--perception-set', 'name=value items')
                   for item in filter(None, (x.strip() for x in self.perception_set.split(','))))
        config_from_dict(PerceptionConfig, out, 'perception.')
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_bool(text: str) -> bool:
    if text.lower() in ('1', 'true', 'yes', 'on'):
        return True
    if text.lower() in ('0', 'false', 'no', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected true/false, got {text!r}')


def build_parser(description: str = '') -> argparse.ArgumentParser:
    """One `--flag-name` per TrainConfig field (lists as comma-separated values)."""
    parser = argparse.ArgumentParser(prog='vla_train', description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = '--' + f.name.replace('_', '-')
        help_text = f.metadata.get('help', '')
        if isinstance(default, bool):
            parser.add_argument(flag, type=_parse_bool, default=default, help=help_text)
        elif isinstance(default, list):
            elem = type(default[0]) if default else float
            parser.add_argument(flag, type=lambda s, t=elem: [t(x) for x in s.split(',') if x.strip()],
                                default=default, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)
    return parser


def config_from_args(argv=None, description: str = '') -> TrainConfig:
    args = build_parser(description).parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    cfg.validate()
    return cfg
