"""PlannerPrefill (static-cache prefill + greedy plan decode, graph-ready) against plain transformers
forwards; layer dropping; FP8 linears (dequantising path on CPU)."""
import os

import pytest
import torch

from vla_ros.planning.prefill import PlannerPrefill, drop_final_layers
from vla_ros.planning.quant import Fp8Linear, quantize_linears

torch.set_num_threads(1)
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=97, tie_word_embeddings=False)


@pytest.fixture(scope='module')
def lm(tmp_path_factory):
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.gpu_models import load_lm, make_random_lm
    path = make_random_lm(str(tmp_path_factory.mktemp('lm') / 'lm'), SHAPE, 'cpu', torch.float32, seed=3)
    return load_lm(path, 'cpu', torch.float32)


def _reference(lm, planner, vis, steps):
    """Full recompute without any cache: embeds -> greedy tokens one at a time."""
    with torch.no_grad():
        embeds = torch.cat([planner.projector(vis), planner.instruction_embeds])[None]
        out = lm(inputs_embeds=embeds, use_cache=False)
        logits = out.logits[0, -1]
        tokens = [int(logits.argmax())]
        for _ in range(steps):
            nxt = lm.get_input_embeddings()(torch.tensor([[tokens[-1]]]))
            embeds = torch.cat([embeds, nxt], dim=1)
            tokens.append(int(lm(inputs_embeds=embeds, use_cache=False).logits[0, -1].argmax()))
    return logits, tokens


def test_prefill_and_decode_match_plain_forwards(lm):
    ids = torch.randint(5, 97, (6,), generator=torch.Generator().manual_seed(0))
    planner = PlannerPrefill(lm, ids, vis_dim=32, max_visual_tokens=40, decode_tokens=5, cuda_graphs=False)
    for k in (40, 17, 40):                      # shorter after longer: stale cache entries must not leak in
        vis = torch.randn(k, 32, generator=torch.Generator().manual_seed(k))
        first = planner.prefill(vis)
        want_logits, want_tokens = _reference(lm, planner, vis, 5)
        torch.testing.assert_close(first['logits'], want_logits, atol=1e-4, rtol=1e-4)
        assert planner.decode(first, k).tolist() == want_tokens
    with pytest.raises(ValueError):
        planner.prefill(torch.zeros(41, 32))


def test_drop_final_layers_keeps_the_first_layers(lm):
    import copy
    small = copy.deepcopy(lm)
    assert drop_final_layers(small, 2) == 1
    assert len(small.model.layers) == 1 and small.config.num_hidden_layers == 1
    x = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        h_full = lm(x, output_hidden_states=True, use_cache=False).hidden_states[1]    # raw layer-1 output
        h_cut = small(x, output_hidden_states=True, use_cache=False).hidden_states[-1]  # layer 1 + final norm
        torch.testing.assert_close(h_cut, lm.model.norm(h_full))
    with pytest.raises(ValueError):
        drop_final_layers(copy.deepcopy(lm), 3)


def test_fp8_linear_is_close_and_replaces_every_linear(lm):
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(5, 64)
    q = Fp8Linear(lin)
    with torch.no_grad():
        ref, got = lin(x), q(x)
    rel = float((got - ref).norm() / ref.norm())
    assert 1e-4 < rel < 0.08                       # quantised (not identical), but close
    import copy
    m = copy.deepcopy(lm)
    n_linear = sum(isinstance(mod, torch.nn.Linear) for mod in m.model.layers.modules())
    assert quantize_linears(m.model.layers, 'fp8') == n_linear == 7 * 3
    assert not any(isinstance(mod, torch.nn.Linear) for mod in m.model.layers.modules())
