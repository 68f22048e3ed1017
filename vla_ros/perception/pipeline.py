"""Perception pipeline: image -> pruned, temporally reused visual tokens (no ROS needed).

Per frame: resize + patch embedding (all positions, cheap) -> layer-0 attention scores and
instruction relevance -> token budget + pruning -> reuse plan (static kept patches reuse cached
features/keys/values, the rest are recomputed through all layers) -> tokens for kept positions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from vla_ros.config.perception import PerceptionConfig
from vla_ros.perception.encoder import VisionEncoder
from vla_ros.perception.pruning import select_tokens, token_budget
from vla_ros.perception.relevance import colour_relevance, colour_words, text_query_embedding
from vla_ros.perception.reuse import TemporalReuse


@dataclass
class PerceptionResult:
    tokens: np.ndarray            # [K, D] float32, kept positions in ascending grid order
    kept_indices: np.ndarray      # [K] int32 row-major grid indices
    grid_hw: Tuple[int, int]
    keep_ratio: float             # K / N
    reuse_ratio: float            # reused / K this frame
    is_keyframe: bool
    compute_ms: float
    scene_embedding: np.ndarray   # [D] float32 unit vector: mean kept token (plan-cache key)
    relevance: Optional[np.ndarray] = None   # [N] instruction relevance (colour), if any


class PerceptionPipeline:
    def __init__(self, encoder: VisionEncoder, cfg: Optional[PerceptionConfig] = None):
        self.encoder = encoder
        self.cfg = cfg or PerceptionConfig()
        self.reuse = TemporalReuse(self.cfg.reuse_similarity, self.cfg.keyframe_interval,
                                   self.cfg.task_relevant_ratio, staggered=self.cfg.refresh == 'staggered')
        self.instruction = ''
        self._colours = []
        self._text_query: Optional[torch.Tensor] = None
        self.frames = 0
        self.last_reuse_plan = None           # ReusePlan of the latest frame (for tests / introspection)

    def set_instruction(self, text: str) -> None:
        self.instruction = text or ''
        self._colours = colour_words(self.instruction)
        self._text_query = (torch.from_numpy(text_query_embedding(self.instruction, self.encoder.hidden_size))
                            if self.instruction.strip() else None)

    def reset(self) -> None:
        """Forget cached features (new episode / scene cut): the next frame is a keyframe."""
        self.reuse.reset()
        self.frames = 0

    def process(self, rgb: np.ndarray) -> PerceptionResult:
        cfg, enc = self.cfg, self.encoder
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0 or rgb.dtype != np.uint8:
            raise ValueError(f'expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}')
        start = time.perf_counter()
        grid = enc.grid_hw
        n = grid[0] * grid[1]
        resized = enc.resize(rgb)
        embeddings = enc.embed(enc.preprocess(resized))

        relevance = colour_relevance(resized, grid, self._colours)
        if relevance is not None and relevance.max() <= 0:
            relevance = None                         # named colour not in view: no signal
        needs_attention = cfg.pruning in ('attention_topk', 'spatial_coverage') or cfg.adaptive_budget \
            or (cfg.pruning == 'query' and relevance is None) or cfg.reuse_enabled
        attention = None
        if needs_attention:
            use_text = cfg.pruning == 'query' and relevance is None and self._text_query is not None
            attention = enc.attention_scores(embeddings, self._text_query if use_text else None)

        if cfg.pruning == 'none':
            budget = n
        else:
            budget_scores = relevance if (cfg.pruning == 'query' and relevance is not None) else attention
            budget = token_budget(n, cfg.keep_ratio, budget_scores, cfg.adaptive_budget, cfg.adaptive_mass,
                                  cfg.min_tokens)
        kept, kept_embeddings = select_tokens(embeddings, cfg.pruning, budget, grid, attention, relevance,
                                              cfg.coverage_salient_fraction)

        if cfg.reuse_enabled:
            tokens, reuse_ratio, keyframe = self._encode_with_reuse(kept, embeddings, resized, relevance, attention)
        else:
            tokens = enc.forward_subset(kept_embeddings).features
            reuse_ratio, keyframe = 0.0, True
        tokens_np = tokens.float().cpu().numpy()
        mean = tokens_np.mean(axis=0)
        scene = (mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32)
        self.frames += 1
        return PerceptionResult(tokens=tokens_np, kept_indices=kept.astype(np.int32), grid_hw=grid,
                                keep_ratio=len(kept) / n, reuse_ratio=reuse_ratio, is_keyframe=keyframe,
                                compute_ms=(time.perf_counter() - start) * 1e3, scene_embedding=scene,
                                relevance=relevance)

    def _encode_with_reuse(self, kept, embeddings, resized, relevance, attention):
        enc = self.encoder
        pixels = enc.patchify(resized)
        cache = self.reuse.ensure_cache(enc.num_patches, enc.num_layers, enc.hidden_size, pixels.shape[1],
                                        device=embeddings.device, dtype=embeddings.dtype)
        plan = self.reuse.plan(kept, pixels, relevance if relevance is not None else attention)
        self.last_reuse_plan = plan
        if len(plan.recompute):
            ctx = torch.as_tensor(plan.reuse, device=embeddings.device, dtype=torch.long)
            out = enc.forward_subset(embeddings[torch.as_tensor(plan.recompute, device=embeddings.device)],
                                     cache.keys[:, ctx], cache.values[:, ctx])
            cache.store(plan.recompute, pixels[plan.recompute], out.features, out.keys, out.values)
        tokens = cache.features[torch.as_tensor(kept, device=embeddings.device, dtype=torch.long)]
        return tokens, plan.reuse_ratio, plan.is_keyframe
