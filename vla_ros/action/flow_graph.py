"""The flow head's whole denoising loop (condition encoding + N Euler steps) as one CUDA graph.

At batch 1 each of the N steps is a few dozen tiny kernels; eager PyTorch spends its time launching
them. `CapturedSampler` captures FlowMatchingActionHead.sample() once per input shape (noise is drawn
inside the graph from the CUDA generator, which graphs support) and replays it. On CPU, or when the
capture fails (logged), it calls sample() directly. Inference only; training is untouched.
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

    def _sample(self, vis_tokens, vis_mask, plan_tokens, proprio):
        return self.head.sample(vis_tokens, vis_mask, plan_tokens, proprio, steps=self.steps)

    @torch.no_grad()
    def __call__(self, vis_tokens: torch.Tensor, vis_mask: torch.Tensor, plan_tokens: torch.Tensor,
                 proprio: torch.Tensor) -> torch.Tensor:
        """Normalised-unit actions [B, H, A] (clone: the graph's output buffer is reused)."""
        key = (tuple(vis_tokens.shape), tuple(plan_tokens.shape), tuple(proprio.shape))
        out = self.graphs.run(key, self._sample, dict(vis_tokens=vis_tokens, vis_mask=vis_mask,
                                                      plan_tokens=plan_tokens, proprio=proprio))
        return out.clone()
