"""The trainable policy: SigLIP vision tower + lightweight-planner plan tokens + flow-matching head.

Training runs the encoder on the same token subsets the perception pipeline feeds it at run time
(positions embedded first, then a subset of 32 or 64 patches through every layer, see
`vla_ros.perception.encoder`), batched and differentiable. Plan tokens are computed exactly as
`LightweightPlanner.plan` does (language slots + a fixed projection of pooled scene tokens), but
in torch so they follow the encoder as it learns; `test_training.py` checks both against the
run-time code paths.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.config import PerceptionConfig, PlannerConfig
from vla_ros.planning.base import PlanRequest, make_planner, seeded_projection, stable_seed
from vla_ros.training.config import TrainConfig

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def build_encoder(cfg: TrainConfig):
    """Fresh SiglipVisionModel (random init from the torch seed) of the configured size."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size,
                                hidden_size=cfg.encoder_hidden, num_hidden_layers=cfg.encoder_layers,
                                num_attention_heads=cfg.encoder_heads, intermediate_size=4 * cfg.encoder_hidden,
                                vision_use_head=False)
    return SiglipVisionModel(config)


def save_encoder(model, path: str) -> str:
    """save_pretrained + a SigLIP image processor, the layout `VisionEncoder.from_pretrained` loads."""
    from vla_ros.models.vision import _save_image_processor

    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    _save_image_processor(path, int(model.config.image_size))
    return path


def build_head(cfg: TrainConfig, action_dim: int, horizon: int, proprio_dim: int) -> FlowMatchingActionHead:
    return FlowMatchingActionHead(FlowHeadConfig(
        action_dim=action_dim, horizon=horizon, vis_dim=cfg.encoder_hidden,
        plan_dim=PlannerConfig().plan_token_dim, proprio_dim=proprio_dim, hidden_dim=cfg.head_hidden,
        num_layers=cfg.head_layers, num_heads=4, denoising_steps=10, memory_layers=cfg.head_memory_layers))


# ---------------------------------------------------------------------------------- encoder
def tower_of(model) -> nn.Module:
    return getattr(model, 'vision_model', model)


def encode_subset(model, pixels: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Normalised pixels [B,3,S,S], kept grid indices [B,K] (ascending) -> features [B,K,D].

    Same math as `VisionEncoder.embed` + `forward_subset` (no reuse context), batched.
    """
    tower = tower_of(model)
    emb = tower.embeddings
    patches = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)            # [B,N,D]
    patches = patches + emb.position_embedding.weight[None, :patches.shape[1]]
    h = torch.gather(patches, 1, kept[..., None].expand(-1, -1, patches.shape[2]))
    batch, tokens, dim = h.shape
    for layer in tower.encoder.layers:
        attn = layer.self_attn
        heads = attn.num_heads
        x = layer.layer_norm1(h)
        split = lambda t: t.view(batch, tokens, heads, dim // heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x)))
        h = h + attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        h = h + layer.mlp(layer.layer_norm2(h))
    post = getattr(tower, 'post_layernorm', None)
    return post(h) if post is not None else h


def normalise_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in the encoder's normalisation."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images_u8: torch.Tensor, cfg: TrainConfig, generator: torch.Generator = None) -> torch.Tensor:
    """Random translation, brightness/contrast jitter and pixel noise -> normalised pixels."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    b, _, h, w = x.shape
    dev = x.device
    rand = lambda *s: torch.rand(*s, device=dev, generator=generator)  # noqa: E731
    if cfg.aug_shift_px > 0:
        shift = (rand(b, 2) * 2 - 1) * cfg.aug_shift_px * 2.0 / torch.tensor([w, h], device=dev)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    if cfg.aug_colour > 0:
        bright = 1.0 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.aug_colour
        contrast = 1.0 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.aug_colour
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
    if cfg.aug_noise > 0:
        x = x + torch.randn(x.shape, device=dev, generator=generator) * cfg.aug_noise
    x = x.clamp(0.0, 1.0)
    mean = torch.tensor(IMAGE_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_kept(relevance: torch.Tensor, keep: int, generator: torch.Generator = None) -> torch.Tensor:
    """Token subsets like the pipeline's spatial-coverage pruning: the instruction-relevant patches
    (target colour) first, the rest spread at random -> ascending indices [B, keep]."""
    b, n = relevance.shape
    if keep >= n:
        return torch.arange(n, device=relevance.device).expand(b, n).contiguous()
    span = relevance.amax(dim=1, keepdim=True).clamp_min(1e-6)
    score = (relevance > 0).float() * 2.0 + relevance / span + torch.rand(b, n, device=relevance.device,
                                                                           generator=generator)
    # The salient half is picked by score, the other half uniformly from the remainder.
    salient = keep // 2
    top = torch.topk(score, salient, dim=1).indices
    rest = torch.rand(b, n, device=relevance.device, generator=generator)
    rest.scatter_(1, top, -1.0)
    others = torch.topk(rest, keep - salient, dim=1).indices
    kept = torch.cat([top, others], dim=1)
    return torch.sort(kept, dim=1).values


# ---------------------------------------------------------------------------------- plan tokens
class PlanTokens:
    """Torch replica of the lightweight planner's plan tokens for the default PlannerConfig."""

    def __init__(self, visual_dim: int, planner_cfg: PlannerConfig = None):
        from vla_ros.planning.lightweight import SLOTS

        self.cfg = planner_cfg or PlannerConfig()
        if self.cfg.type != 'lightweight':
            raise ValueError('training computes lightweight-planner plan tokens')
        self.planner = make_planner(self.cfg, visual_dim)
        self.visual_dim = visual_dim
        self.num_slots = len(SLOTS)
        self.regions = max(self.cfg.num_plan_tokens - self.num_slots, 0)
        proj = seeded_projection(visual_dim, self.cfg.plan_token_dim,
                                 stable_seed(self.cfg.seed, 'lightweight-scene', visual_dim))
        self.projection = torch.as_tensor(proj, dtype=torch.float32)
        self._language: Dict[str, torch.Tensor] = {}

    def language(self, instruction: str) -> torch.Tensor:
        """Plan tokens with an empty scene (colour, object, verb and word slots only) [T, Dp]."""
        tokens = self._language.get(instruction)
        if tokens is None:
            out = self.planner.plan(PlanRequest(instruction=instruction,
                                                visual_tokens=np.zeros((0, self.visual_dim), np.float32)))
            tokens = torch.as_tensor(np.asarray(out.plan_tokens), dtype=torch.float32)
            self._language[instruction] = tokens
        return tokens

    def language_batch(self, instructions: Sequence[str], device) -> torch.Tensor:
        return torch.stack([self.language(i) for i in instructions]).to(device)

    def scene(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scene part of the plan tokens from kept visual tokens [B,K,D] in ascending grid order."""
        groups: List[torch.Tensor] = [tokens.mean(dim=1)]
        if self.regions:
            for g in np.array_split(np.arange(tokens.shape[1]), self.regions):
                groups.append(tokens[:, g].mean(dim=1) if len(g) else tokens.mean(dim=1))
        pooled = torch.stack(groups, dim=1)                                        # [B, 1+R, D]
        feats = pooled - pooled.mean(dim=2, keepdim=True)
        # numpy std is the population std (unbiased=False).
        feats = feats / (feats.std(dim=2, keepdim=True, unbiased=False) + 1e-6)
        projected = feats @ self.projection.to(tokens.device)
        out = torch.zeros(tokens.shape[0], self.cfg.num_plan_tokens, projected.shape[2], device=tokens.device)
        scene_slot = list(('colour', 'object', 'verb', 'words', 'scene')).index('scene') % self.cfg.num_plan_tokens
        out[:, scene_slot] = projected[:, 0]
        if self.regions:
            out[:, self.num_slots:] = projected[:, 1:]
        return out

    def __call__(self, instructions: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
        return self.language_batch(instructions, tokens.device) + self.scene(tokens)


def relevance_of(image: np.ndarray, instruction: str, grid_hw: Tuple[int, int]) -> np.ndarray:
    """The pipeline's colour relevance of a (resized) image for an instruction; zeros without a colour."""
    from vla_ros.perception.relevance import colour_relevance, colour_words

    rel = colour_relevance(image, grid_hw, colour_words(instruction))
    if rel is None:
        return np.zeros(grid_hw[0] * grid_hw[1], np.float32)
    return rel.astype(np.float32)


def task_colours(task: str = 'touch') -> Tuple[str, ...]:
    """Object colours of a task preset's scene: the cubes (sim task touch), cubes and pads (pick_place)."""
    from vla_ros.config.tasks import TASK_PRESETS
    from vla_ros.sim.tasks import CUBE_COLOURS, PAD_COLOURS

    sim_task = TASK_PRESETS.get(task, {}).get('sim.task', task)
    return CUBE_COLOURS + (PAD_COLOURS if sim_task == 'pick_place' else ())


def colour_maps(image: np.ndarray, grid_hw: Tuple[int, int], task: str = 'touch') -> np.ndarray:
    """[C, N] per-patch coverage of each object colour of the task (auxiliary encoder targets)."""
    return np.stack([relevance_of(image, colour, grid_hw) for colour in task_colours(task)])


def default_keep_tokens(grid_tokens: int) -> int:
    return int(np.clip(round(PerceptionConfig().keep_ratio * grid_tokens), 1, grid_tokens))
