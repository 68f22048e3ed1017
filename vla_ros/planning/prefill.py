"""Planner prefill on the GPU: kept visual tokens + instruction through a transformers causal LM,
then a short greedy plan decode, with fixed shapes so both run as CUDA graphs.

The visual tokens (perception output, [K, D_vis], K a bucket) are projected into the LM's embedding
space (seeded linear map, or a trained projector) and placed in front of the embedded instruction,
as VLMPlanner does. A transformers StaticCache of fixed length holds the keys/values, so the prefill
is one graph per K bucket and each decode step one graph for every position (the position is a
tensor input). `drop_layers` removes the LM's final decoder layers (SmolVLA runs only the first
half of its VLM); `quantize='int8'` swaps the decoder's linear layers for int8 weight-only ones
(planning/quant.py). Each knob's output drift is measured by bench/bench_gpu_pipeline.py.
"""
from __future__ import annotations

import inspect
import logging
from typing import Dict, List, Optional

import torch

from vla_ros.models.graphs import GraphCache

LOG = logging.getLogger(__name__)


def find_text_decoder(model):
    """The language model's decoder stack (the module with `embed_tokens` and a `layers` ModuleList)
    inside a causal LM or a VLM; the vision tower's layers are never picked."""
    for module in model.modules():
        if isinstance(getattr(module, 'layers', None), torch.nn.ModuleList) and hasattr(module, 'embed_tokens'):
            return module
    raise ValueError(f'no text decoder (embed_tokens + layers) in {type(model).__name__}')


def drop_final_layers(lm, drop: int) -> int:
    """Keep the first L - drop decoder layers of a transformers causal LM or VLM's language model
    (in place); returns how many are kept."""
    base = find_text_decoder(lm)
    layers = base.layers
    keep = len(layers) - int(drop)
    if drop <= 0:
        return len(layers)
    if keep < 1:
        raise ValueError(f'cannot drop {drop} of {len(layers)} layers')
    base.layers = torch.nn.ModuleList(list(layers)[:keep])
    configs = [base.config, lm.config, getattr(lm.config, 'text_config', None)]
    for cfg in {id(c): c for c in configs if c is not None}.values():
        if getattr(cfg, 'num_hidden_layers', None) is None:
            continue
        cfg.num_hidden_layers = keep
        if getattr(cfg, 'layer_types', None):
            cfg.layer_types = list(cfg.layer_types)[:keep]
    return keep


def make_projector(hidden: int, vis_dim: int, seed: int = 0) -> torch.nn.Linear:
    """Seeded linear map from the vision width into the LM's embedding space (the stand-in for a
    trained projector; both prefill paths build the same one from the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(hidden, vis_dim, generator=gen) / vis_dim ** 0.5
    projector = torch.nn.Linear(vis_dim, hidden, bias=False)
    with torch.no_grad():
        projector.weight.copy_(weight)
    return projector


class PlannerPrefill:
    def __init__(self, lm, instruction_ids: torch.Tensor, vis_dim: int, max_visual_tokens: int,
                 decode_tokens: int = 8, cuda_graphs: bool = True, seed: int = 0, projector=None):
        from transformers import StaticCache

        self.lm = lm.eval()
        param = next(lm.parameters())
        self.device, self.dtype = param.device, param.dtype
        hidden = lm.config.hidden_size
        if projector is None:
            projector = make_projector(hidden, vis_dim, seed)
        self.projector = projector.to(self.device, self.dtype).eval()
        ids = torch.as_tensor(instruction_ids, dtype=torch.long, device=self.device).view(-1)
        with torch.inference_mode():
            self.instruction_embeds = lm.get_input_embeddings()(ids).detach()
        self.num_text = int(ids.shape[0])
        self.decode_tokens = int(decode_tokens)
        self.max_len = int(max_visual_tokens) + self.num_text + self.decode_tokens
        self.cache = StaticCache(config=lm.config, max_cache_len=self.max_len)
        self.graphs = GraphCache('planner', enabled=cuda_graphs and self.device.type == 'cuda')
        # transformers renamed past_key_values -> cache (5.2x); pass whichever this version takes.
        params = inspect.signature(lm.model.forward).parameters
        self._cache_kw = 'cache' if 'cache' in params else 'past_key_values'

    def _seek(self, position) -> None:
        """Point the static cache's write position at `position` (int 0 or a 0-d/[1] tensor): the
        cache layers append at their own cumulative length, which must restart every prefill."""
        for layer in getattr(self.cache, 'layers', ()):
            length = getattr(layer, 'cumulative_length', None)
            if isinstance(length, torch.Tensor) and getattr(layer, 'is_initialized', False):
                if isinstance(position, torch.Tensor):
                    length.copy_(position.reshape(()))
                else:
                    length.fill_(int(position))

    # ------------------------------------------------------------------ graph bodies
    def _prefill(self, vis_tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        visual = self.projector(vis_tokens.to(self.dtype))
        embeds = torch.cat([visual, self.instruction_embeds], dim=0)[None]
        length = embeds.shape[1]
        position = torch.arange(length, device=self.device)
        self._seek(0)
        out = self.lm(inputs_embeds=embeds, cache_position=position, position_ids=position[None], use_cache=True,
                      logits_to_keep=1, **{self._cache_kw: self.cache})
        logits = out.logits[0, -1].float()
        return dict(logits=logits, token=logits.argmax().view(1, 1))

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> Dict[str, torch.Tensor]:
        self._seek(position)
        out = self.lm(input_ids=token, cache_position=position, position_ids=position[None], use_cache=True,
                      **{self._cache_kw: self.cache})
        logits = out.logits[0, -1].float()
        return dict(logits=logits, token=logits.argmax().view(1, 1))

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def prefill(self, vis_tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """[K, D_vis] device tensor -> {'logits': [V] next-token logits, 'token': [1,1] argmax}."""
        k = int(vis_tokens.shape[0])
        if k + self.num_text + self.decode_tokens > self.max_len:
            raise ValueError(f'{k} visual tokens exceed max_visual_tokens')
        return self.graphs.run(('prefill', k), self._prefill, dict(vis_tokens=vis_tokens))

    @torch.inference_mode()
    def precapture(self, visual_counts, vis_dim: int) -> None:
        """Capture the prefill graph of each visual-token bucket and the decode step ahead of a run."""
        for k in sorted(set(int(c) for c in visual_counts)):
            first = self.prefill(torch.zeros(k, vis_dim, device=self.device, dtype=self.dtype))
            self.decode(first, k, steps=1)

    @torch.inference_mode()
    def decode(self, first: Dict[str, torch.Tensor], vis_count: int, steps: Optional[int] = None) -> torch.Tensor:
        """Greedy plan decode after prefill(): [steps + 1] token ids (the prefill's token first), on device."""
        steps = self.decode_tokens if steps is None else min(int(steps), self.decode_tokens)
        tokens: List[torch.Tensor] = [first['token'].view(1).clone()]
        token = first['token'].clone()
        start = vis_count + self.num_text
        for i in range(steps):
            position = torch.full((1,), start + i, dtype=torch.long, device=self.device)
            out = self.graphs.run(('step',), self._step, dict(token=token, position=position))
            token = out['token'].clone()
            tokens.append(token.view(1))
        return torch.cat(tokens)
