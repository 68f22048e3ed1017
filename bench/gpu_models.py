"""Random-weight models of real architectures and sizes for bench_gpu_pipeline.py, saved and loaded
back through transformers' own loading code, plus FLOP estimates for the stages.

SmolVLA scale: a SigLIP-so400m-shape vision tower (27 layers, width 1152, 729 patches at 378 px) and a
Qwen2-0.5B-shape language model. OpenVLA scale: the same tower and a Qwen2-7B-shape language model
(OpenVLA's LM is Llama-2-7B; Qwen2-7B is the same class of dense 7B decoder). 'tiny' exists to
develop and test the benchmark on a CPU.
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from vla_ros.models.vision import SIGLIP_SO400M_SHAPE

TINY_VISION = dict(image_size=128, patch_size=16, hidden_size=64, num_layers=2, num_heads=4)
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
SCALES: Dict[str, Dict] = {
    'tiny': dict(vision=TINY_VISION, lm=TINY_LM),
    'smolvla': dict(vision=SIGLIP_SO400M_SHAPE, lm=QWEN2_05B),
    'openvla': dict(vision=SIGLIP_SO400M_SHAPE, lm=QWEN2_7B),
}


def make_random_lm(path: str, shape: Dict, device: str, dtype: torch.dtype, seed: int = 0) -> str:
    """Build a Qwen2ForCausalLM of `shape` with seeded random weights directly on `device` and save it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(max_position_embeddings=4096, rope_theta=1e6, **shape)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    del model
    if device.startswith('cuda'):
        torch.cuda.empty_cache()
    return path


def load_lm(path: str, device: str, dtype: torch.dtype):
    """The real loading path: AutoModelForCausalLM.from_pretrained on the saved directory."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype)
    if device.startswith('cuda'):
        kwargs['device_map'] = device
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


def vision_flops(recompute: float, context: float, cfg) -> float:
    """Encoder layers over `recompute` tokens attending to recompute + context keys."""
    d, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = 2 * recompute * d * 4 * d + 2 * recompute * 2 * d * i + 4 * recompute * (recompute + context) * d
    return layers * per_layer


def lm_flops(tokens: float, cfg, logits_positions: int = 1) -> float:
    """Causal LM forward over `tokens` positions (attention counted causal) + the LM head."""
    d, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = d // cfg.num_attention_heads * cfg.num_key_value_heads
    per_layer = 2 * tokens * (2 * d * d + 2 * d * kv) + 2 * tokens * 3 * d * i + 2 * tokens * tokens * d
    return layers * per_layer + 2 * logits_positions * d * cfg.vocab_size
