"""int8 weight-only matmul for the planner LM: half the weight bytes of bf16 at the same activations.

At batch 1 a 7B prefill of ~100 tokens is bound by reading the weights (~15 GB in bf16, ~5 ms on an
H100). `Int8Weight` keeps a weight [N, K] as int8 with one float32 scale per output row (symmetric,
round to nearest); `int8_linear(x, w, bias, residual)` computes x @ dequant(w).T (+ bias)
(+ residual). On CUDA with Triton it is one kernel that loads int8 tiles, converts them to bf16 in
registers and runs the tensor-core dot (the scale, bias and residual applied in the epilogue), so
the weights cross memory once as int8. Elsewhere it dequantises and calls F.linear (same numbers up
to accumulation order; used by the CPU tests). Activations stay bf16: no per-token quantisation.
The drift it costs is measured by bench/bench_gpu_pipeline.py (next-token agreement, logit cosine).

Measured on an H100 (bench/RESULTS.md): this kernel does NOT beat cuBLAS bf16 at the 7B shapes (11.8
vs 8.7 ms per 91-row prefill); a variant with untransposed weight tiles and autotuned N/K tiles was
slower still (24 ms, bench/results/gpu_openvla_int8.json). Kept as an option with its drift measured.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the install
    import triton
    import triton.language as tl
    _HAVE_TRITON = True
except Exception:
    _HAVE_TRITON = False

_FAILED = []


class Int8Weight:
    def __init__(self, weight: torch.Tensor):
        w = weight.detach().float()
        self.scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).contiguous()       # [N] fp32
        self.q = torch.round(w / self.scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.dtype = weight.dtype
        self.shape = tuple(weight.shape)

    def dequantize(self) -> torch.Tensor:
        return (self.q.float() * self.scale[:, None]).to(self.dtype)


if _HAVE_TRITON:
    @triton.jit
    def _w8_kernel(x_ptr, w_ptr, s_ptr, b_ptr, r_ptr, y_ptr, M, N, K: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm < M
        n_ok = rn < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + rk) < K
            a = tl.load(x_ptr + rm[:, None] * K + (k0 + rk)[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + rn[None, :] * K + (k0 + rk)[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0)
            acc += tl.dot(a, b.to(a.dtype))
        acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out_mask = m_ok[:, None] & n_ok[None, :]
        if HAS_RES:
            acc += tl.load(r_ptr + rm[:, None] * N + rn[None, :], mask=out_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_mask)


def _blocks(m: int, n: int):
    """Tile sizes: M tile >= 16 (tensor-core minimum), N tile small enough that even the narrowest
    projection spreads over the SMs (the kernel streams weights; every SM should pull its share)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    block_n = 32 if n <= 8192 else 64
    return block_m, block_n, 128


def triton_int8_available(device) -> bool:
    return _HAVE_TRITON and not _FAILED and torch.device(device).type == 'cuda'


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: Optional[torch.Tensor] = None,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] -> x @ dequant(w).T (+ bias) (+ residual), [M, N] in x's dtype."""
    if triton_int8_available(x.device):
        try:
            m, k = x.shape
            n = w.shape[0]
            x = x.contiguous()
            y = torch.empty(m, n, device=x.device, dtype=x.dtype)
            bm, bn, bk = _blocks(m, n)
            res = residual.contiguous() if residual is not None else y
            grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
            _w8_kernel[grid](x, w.q, w.scale, bias if bias is not None else w.scale, res, y, m, n, K=k,
                             HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                             BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=4)
            return y
        except Exception as exc:  # noqa: BLE001 - a Triton that cannot build it: the dequantising path, logged
            if not _FAILED:
                LOG.warning('int8 Triton matmul unavailable, dequantising instead: %s', exc)
            _FAILED.append(str(exc))
    out = F.linear(x, w.dequantize(), bias)
    return out if residual is None else out + residual
