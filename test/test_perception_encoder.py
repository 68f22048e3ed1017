"""Vision encoder: seeded demo checkpoint, loading through transformers, subset forward == HF tower."""
import numpy as np
import pytest
import safetensors.torch
import torch

from vla_ros.models.vision import make_demo_vision_encoder
from vla_ros.perception.encoder import EncoderLoadError, VisionEncoder

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    return make_demo_vision_encoder(str(tmp_path_factory.mktemp('enc') / 'vision'), seed=0, image_size=64,
                                    patch_size=16, hidden_size=32, num_layers=2, num_heads=4)


def _weights(path):
    return safetensors.torch.load_file(f'{path}/model.safetensors')


def test_demo_encoder_is_deterministic_per_seed(encoder_dir, tmp_path):
    same = make_demo_vision_encoder(str(tmp_path / 'same'), seed=0, image_size=64, hidden_size=32)
    other = make_demo_vision_encoder(str(tmp_path / 'other'), seed=1, image_size=64, hidden_size=32)
    a, b, c = _weights(encoder_dir), _weights(same), _weights(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loads_from_save_pretrained_dir_and_matches_hf_forward(encoder_dir):
    enc = VisionEncoder.from_pretrained(encoder_dir)
    assert (enc.grid_hw, enc.hidden_size, enc.image_size, enc.num_layers) == ((4, 4), 32, 64, 2)
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)   # any size: resized
    pixels = enc.preprocess(rgb)
    assert pixels.shape == (1, 3, 64, 64) and float(pixels.abs().max()) <= 1.0 + 1e-6
    with torch.no_grad():
        ref = enc.tower(pixel_values=pixels).last_hidden_state[0]
    torch.testing.assert_close(enc.encode(rgb), ref, rtol=1e-5, atol=1e-5)


def test_subset_forward_equals_hf_layers_on_the_kept_tokens(encoder_dir):
    """Pruned tokens go through the real layers: same numbers as the HF encoder fed only those tokens."""
    enc = VisionEncoder.from_pretrained(encoder_dir)
    emb = enc.embed(enc.preprocess(np.full((64, 64, 3), 90, np.uint8)))
    kept = torch.tensor([0, 3, 5, 6, 12, 15])
    with torch.no_grad():
        ref = enc.tower.encoder(inputs_embeds=emb[kept][None]).last_hidden_state[0]
        ref = enc.tower.post_layernorm(ref)
    out = enc.forward_subset(emb[kept])
    torch.testing.assert_close(out.features, ref, rtol=1e-5, atol=1e-5)
    assert out.keys.shape == (2, 6, 32) and out.values.shape == (2, 6, 32)
    # Recomputing a part while attending to the cached keys/values of the rest reproduces the full pass.
    part = enc.forward_subset(emb[kept[:2]], out.keys[:, 2:], out.values[:, 2:])
    torch.testing.assert_close(part.features, ref[:2], rtol=1e-5, atol=1e-5)


def test_fused_qkv_and_masked_forward_compute_the_same(encoder_dir):
    """fuse_qkv (one stacked q/k/v matmul, module weights become views) and forward_masked (padding
    rows + masked context) give the subset forward's numbers; the HF tower is unchanged."""
    enc = VisionEncoder.from_pretrained(encoder_dir)
    emb = enc.embed(enc.preprocess(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    kept = torch.tensor([1, 2, 4, 7, 8, 11, 13])
    pixels = enc.preprocess(np.full((64, 64, 3), 40, np.uint8))
    with torch.no_grad():
        tower_before = enc.tower(pixel_values=pixels).last_hidden_state
    full = enc.forward_subset(emb[kept])
    part = enc.forward_subset(emb[kept[:3]], full.keys[:, 3:], full.values[:, 3:])
    enc.fuse_qkv()
    with torch.no_grad():
        torch.testing.assert_close(enc.tower(pixel_values=pixels).last_hidden_state, tower_before)
    fused = enc.forward_subset(emb[kept])
    torch.testing.assert_close(fused.features, full.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.keys, full.keys, rtol=1e-5, atol=1e-5)
    # Fixed shapes: 3 real rows + 2 padding rows, context = all 7 (the 3 recomputed ones masked) + 1 pad.
    hidden = torch.cat([emb[kept[:3]], emb[:2]])
    mask = torch.tensor([True] * 3 + [False] * 2 + [False] * 3 + [True] * 4 + [False])
    ctx_k = torch.cat([full.keys, torch.zeros(2, 1, 32)], 1)
    ctx_v = torch.cat([full.values, torch.zeros(2, 1, 32)], 1)
    masked = enc.forward_masked(hidden, ctx_k, ctx_v, mask)
    torch.testing.assert_close(masked.features[:3], part.features, rtol=1e-5, atol=1e-5)


def test_attention_scores_are_a_distribution_over_positions(encoder_dir):
    enc = VisionEncoder.from_pretrained(encoder_dir)
    emb = enc.embed(enc.preprocess(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    for query in (None, torch.randn(32)):
        s = enc.attention_scores(emb, query)
        assert s.shape == (16,) and np.all(s >= 0) and s.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(enc.attention_scores(emb), enc.attention_scores(emb, torch.randn(32)))


def test_vision_tower_found_inside_a_dual_encoder_checkpoint(tmp_path):
    from transformers import SiglipConfig, SiglipModel
    cfg = SiglipConfig(text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, vocab_size=50),
                       vision_config=dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32))
    SiglipModel(cfg).save_pretrained(tmp_path / 'dual')
    enc = VisionEncoder.from_pretrained(str(tmp_path / 'dual'))
    assert enc.grid_hw == (4, 4) and enc.hidden_size == 16
    assert enc.encode(np.zeros((32, 32, 3), np.uint8)).shape == (16, 16)


def test_missing_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(EncoderLoadError, match='config.json'):
        VisionEncoder.from_pretrained(str(tmp_path))
    with pytest.raises(EncoderLoadError):
        VisionEncoder.from_pretrained('')
