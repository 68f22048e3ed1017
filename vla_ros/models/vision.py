"""Seeded random-weight vision encoders saved in the transformers `save_pretrained` layout.

There is no model hub here: the demo, the tests and the benches build a SigLIP vision tower
with fixed weights from a seed, save it, and load it back through the same code path a real
checkpoint (e.g. google/siglip-base-patch16-224) would take.
"""
from __future__ import annotations

import os

import torch

# SigLIP-base/16 at 224 px: what a real deployment would run (used by the benches for realistic cost).
SIGLIP_BASE_SHAPE = dict(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12)
# SigLIP-so400m/14 (PaliGemma / SmolVLM-class tower) at 378 px = 27x27 patches (MLP 4x instead of 3.7x).
SIGLIP_SO400M_SHAPE = dict(image_size=378, patch_size=14, hidden_size=1152, num_layers=27, num_heads=16)


def make_demo_vision_encoder(path: str, seed: int = 0, image_size: int = 128, patch_size: int = 16,
                             hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4) -> str:
    """Build a random-weight SigLIP vision model from `seed` and save it (+ image processor) to `path`.

    Deterministic for a given seed and shape: the trained action head depends on these exact features.
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                intermediate_size=4 * hidden_size, vision_use_head=False)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = SiglipVisionModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    _save_image_processor(path, image_size)
    return path


def _save_image_processor(path: str, image_size: int) -> None:
    try:
        from transformers import SiglipImageProcessorPil as Processor  # no torchvision needed
    except ImportError:  # older transformers
        from transformers import SiglipImageProcessor as Processor
    Processor(size={'height': image_size, 'width': image_size}, image_mean=[0.5] * 3,
              image_std=[0.5] * 3).save_pretrained(path)
