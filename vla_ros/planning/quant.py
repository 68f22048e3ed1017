"""Low-precision planner weights to lift the weight-bandwidth floor of a large LM at batch 1.

`quantize_linears(module, 'fp8')`: every nn.Linear inside the LM's decoder layers becomes an
Fp8Linear: weights in float8 e4m3 with one scale per output row (half the bytes of bf16), activations
quantised per token on the fly, the product by torch._scaled_mm (Hopper FP8 tensor cores, rowwise
scales). Needs a CUDA device with FP8 support (compute capability >= 8.9); elsewhere -- and for
shapes _scaled_mm rejects -- it computes the same quantised product by dequantising, which is exact
for checking drift on CPU but not fast. torchao is not used: the device image has no wheel of it.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

LOG = logging.getLogger(__name__)
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def _fp8_supported(device: torch.device) -> bool:
    return device.type == 'cuda' and torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12)      # [N, 1]
        self.register_buffer('weight_fp8', (w / scale).to(FP8))                     # [N, K]
        self.register_buffer('weight_scale', scale.t().contiguous())                # [1, N] fp32
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(),
                                                                          requires_grad=False)
        self.out_dtype = linear.weight.dtype
        self.fast = _fp8_supported(self.weight_fp8.device) and w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        x_scale = (x2.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp_min(1e-12)   # [M, 1]
        x_fp8 = (x2.float() / x_scale).to(FP8)
        out = None
        if self.fast:
            try:
                out = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                       out_dtype=self.out_dtype)
            except RuntimeError as exc:   # a shape or build _scaled_mm rejects: the exact slow path
                LOG.warning('Fp8Linear: torch._scaled_mm failed (%s); dequantising instead', exc)
                self.fast = False
        if out is None:
            out = ((x_fp8.float() * x_scale) @ (self.weight_fp8.float() * self.weight_scale.t()).t()).to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], out.shape[-1])


def quantize_linears(module: torch.nn.Module, mode: Optional[str]) -> int:
    """Replace the nn.Linear layers under `module` (in place); returns how many were replaced."""
    if not mode or mode == 'none':
        return 0
    if mode != 'fp8':
        raise ValueError(f'unknown quantisation {mode!r} (none, fp8)')
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Fp8Linear(child))
            count += 1
        else:
            count += quantize_linears(child, mode)
    return count
