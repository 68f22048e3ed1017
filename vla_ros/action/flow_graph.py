"""The flow head's whole denoising loop (condition encoding + N Euler steps) as one CUDA graph.

At batch 1 each of the N steps is a few dozen tiny kernels; eager PyTorch spends its time launching
them. `CapturedSampler` captures FlowMatchingActionHead.sample() once per input shape (noise is drawn
inside the graph from the CUDA default generator, which graphs support) and replays it; with
real-time chunking the prefix and its weights are graph inputs too (one graph with, one without).
On CPU, or when the capture fails (logged), it calls sample() directly. Inference only; training is
untouched. `predict_actions` is the raw-unit interface of FlowMatchingActionHead.predict_actions
(no per-call generator: a seeded generator cannot be replayed by a graph).
"""
from __future__ import annotations

from typing import Optional

import torch

from vla_ros.action.flow_head import FlowMatchingActionHead
from vla_ros.models.graphs import GraphCache


class CapturedSampler:
    def __init__(self, head: FlowMatchingActionHead, cuda_graphs: bool = True, steps: Optional[int] = None):
        self.head = head.eval()
        self.steps = int(steps or head.config.denoising_steps)
        device = head.action_mean.device
        self.graphs = GraphCache('flow_head', enabled=cuda_graphs and device.type == 'cuda')

    def _sample(self, vis_tokens, vis_mask, plan_tokens, proprio, prefix=None, prefix_weights=None):
        return self.head.sample(vis_tokens, vis_mask, plan_tokens, proprio, steps=self.steps, prefix=prefix,
                                prefix_weights=prefix_weights)

    @torch.no_grad()
    def __call__(self, vis_tokens: torch.Tensor, vis_mask: torch.Tensor, plan_tokens: torch.Tensor,
                 proprio: torch.Tensor, prefix: Optional[torch.Tensor] = None,
                 prefix_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised-unit actions [B, H, A] (clone: the graph's output buffer is reused)."""
        inputs = dict(vis_tokens=vis_tokens, vis_mask=vis_mask, plan_tokens=plan_tokens, proprio=proprio)
        if prefix is not None:
            inputs.update(prefix=prefix, prefix_weights=prefix_weights)
        key = tuple(tuple(v.shape) for v in inputs.values())
        return self.graphs.run(key, self._sample, inputs).clone()

    @torch.no_grad()
    def predict_actions(self, vis_tokens, vis_mask, plan_tokens, proprio, prefix=None,
                        prefix_weights=None) -> torch.Tensor:
        """Raw units in and out, as FlowMatchingActionHead.predict_actions: proprio [B,P] rad, actions [B,H,A] rad."""
        head = self.head
        device = head.action_mean.device
        as_t = lambda x: None if x is None else torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
        vis = as_t(vis_tokens)
        mask = (torch.ones(vis.shape[:2], dtype=torch.bool, device=device) if vis_mask is None
                else torch.as_tensor(vis_mask, dtype=torch.bool, device=device))
        norm_prefix = None if prefix is None else head.normalize_actions(as_t(prefix))
        out = self(vis, mask, as_t(plan_tokens), head.normalize_proprio(as_t(proprio)), norm_prefix,
                   as_t(prefix_weights))
        return head.denormalize_actions(out)
