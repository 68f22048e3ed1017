"""SlotKVPrefill (own decoder forward over a transformers LM's weights, keys/values kept per slot
across frames) against plain transformers forwards on the same tokens and positions."""
import copy
import os
import sys

import pytest
import torch

from vla_ros.planning.kv_prefill import SlotKVPrefill
from vla_ros.planning.prefill import PlannerPrefill

torch.set_num_threads(1)
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=97, tie_word_embeddings=False)
N = 30      # grid positions
VIS = 24    # vision width


@pytest.fixture(scope='module')
def lm(tmp_path_factory):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.gpu_models import load_lm, make_random_lm
    path = make_random_lm(str(tmp_path_factory.mktemp('lm') / 'lm'), SHAPE, 'cpu', torch.float32, seed=5)
    return load_lm(path, 'cpu', torch.float32)


def _reference(lm, planner, kept, vis, steps=0):
    """transformers forward, no cache: [projected visual, instruction] at positions [kept, N..N+T-1].
    (An explicit attention mask: without one, transformers reads position-id jumps as packed sequences.)"""
    with torch.no_grad():
        embeds = torch.cat([planner.projector(vis), planner.instruction_embeds])[None]
        pos = torch.cat([kept, torch.arange(N, N + planner.num_text)])
        ones = lambda e: torch.ones(e.shape[:2], dtype=torch.long)  # noqa: E731
        logits = lm(inputs_embeds=embeds, attention_mask=ones(embeds), position_ids=pos[None],
                    use_cache=False).logits[0, -1]
        tokens = [int(logits.argmax())]
        for i in range(steps):
            nxt = lm.get_input_embeddings()(torch.tensor([[tokens[-1]]]))
            embeds = torch.cat([embeds, nxt], dim=1)
            pos = torch.cat([pos, torch.tensor([N + planner.num_text + i])])
            tokens.append(int(lm(inputs_embeds=embeds, attention_mask=ones(embeds), position_ids=pos[None],
                                 use_cache=False).logits[0, -1].argmax()))
    return logits, tokens


def _ids():
    return torch.randint(5, 97, (6,), generator=torch.Generator().manual_seed(0))


def _kept(k, seed):
    return torch.sort(torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:k]).values


def test_full_recompute_matches_transformers_and_leaves_the_model_intact(lm):
    x = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        before = lm(x, use_cache=False).logits
    planner = SlotKVPrefill(lm, _ids(), VIS, N, decode_tokens=4, cuda_graphs=False, reuse=False)
    with torch.no_grad():
        torch.testing.assert_close(lm(x, use_cache=False).logits, before)   # fused weights are views
    for k, seed in ((N, 0), (12, 1), (20, 2)):                                # fewer after more: stale slots masked
        kept = _kept(k, seed)
        vis = torch.randn(k, VIS, generator=torch.Generator().manual_seed(seed))
        first = planner.prefill(vis, kept)
        want_logits, want_tokens = _reference(lm, planner, kept, vis, steps=4)
        torch.testing.assert_close(first['logits'], want_logits, atol=1e-4, rtol=1e-4)
        assert planner.decode(first).tolist() == want_tokens
        assert planner.last_recomputed == k


def test_contiguous_positions_equal_the_static_cache_prefill(lm):
    """kept = 0..K-1: the same prompt as PlannerPrefill (transformers StaticCache) builds."""
    ids = _ids()
    ref = PlannerPrefill(copy.deepcopy(lm), ids, VIS, N, cuda_graphs=False)
    planner = SlotKVPrefill(lm, ids, VIS, N, cuda_graphs=False)
    vis = torch.randn(N, VIS, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(planner.prefill(vis)['logits'], ref.prefill(vis)['logits'], atol=1e-4, rtol=1e-4)


def test_reuse_recomputes_only_changed_tokens(lm):
    planner = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True, recompute_buckets=(0.25, 0.5, 1.0))
    kept = _kept(20, 3)
    vis = torch.randn(20, VIS, generator=torch.Generator().manual_seed(3))
    first = planner.prefill(vis, kept)
    assert planner.last_recomputed == 20
    # Nothing changed: only the instruction is recomputed, and the cached keys/values ARE the full prefill's.
    again = planner.prefill(vis.clone(), kept)
    assert planner.last_recomputed == 0
    torch.testing.assert_close(again['logits'], first['logits'], atol=1e-5, rtol=1e-5)
    # A few tokens changed: exactly those are recomputed (padded to a bucket); the tokens after them
    # in slot order keep last frame's keys/values, so the result is close to, not equal to, a full prefill.
    vis2 = vis.clone()
    vis2[[2, 7, 15]] += 0.5 * torch.randn(3, VIS, generator=torch.Generator().manual_seed(4))
    out = planner.prefill(vis2, kept)
    assert planner.last_recomputed == 3
    want, _ = _reference(lm, planner, kept, vis2)
    cos = torch.nn.functional.cosine_similarity(out['logits'], want, dim=0)
    assert cos > 0.95
    # Changing only the LAST kept token is exact: causally, every slot before it is unaffected by it,
    # so after one full pass the reused keys/values equal a full prefill's.
    vis3 = vis2.clone()
    vis3[-1] += 1.0
    fresh = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True)
    fresh.prefill(vis2, kept)
    got = fresh.prefill(vis3, kept)
    assert fresh.last_recomputed == 1
    want3, _ = _reference(lm, fresh, kept, vis3)
    torch.testing.assert_close(got['logits'], want3, atol=1e-4, rtol=1e-4)


def test_kept_set_change_recomputes_new_slots_and_masks_pruned_ones(lm):
    planner = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True)
    feats = torch.randn(N, VIS, generator=torch.Generator().manual_seed(6))   # one feature per grid slot
    a = _kept(16, 7)
    planner.prefill(feats[a], a)
    b = torch.sort(torch.cat([a[:8], torch.tensor(sorted(set(range(N)) - set(a.tolist()))[:8])])).values
    out = planner.prefill(feats[b], b)
    assert planner.last_recomputed == len(set(b.tolist()) - set(a.tolist()))
    # Slots dropped from the kept set take no part: same as a fresh full prefill of b when the reused
    # slots' keys/values do not depend on anything that changed (they come before every new slot).
    fresh = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=False)
    want = fresh.prefill(feats[b], b)
    cos = torch.nn.functional.cosine_similarity(out['logits'], want['logits'], dim=0)
    assert cos > 0.95


def test_int8_weights_equal_the_dequantised_model_and_stay_close_to_bf16(lm):
    from vla_ros.planning.int8 import Int8Weight, int8_linear
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
    q = Int8Weight(w)
    assert q.q.dtype == torch.int8 and float((q.dequantize() - w).abs().max()) <= float(q.scale.max()) / 2 + 1e-7
    x, r, b = torch.randn(5, 24), torch.randn(5, 40), torch.randn(40)
    torch.testing.assert_close(int8_linear(x, q, b, r), x @ q.dequantize().t() + b + r, atol=1e-5, rtol=1e-5)
    kept = _kept(20, 8)
    vis = torch.randn(20, VIS, generator=torch.Generator().manual_seed(8))
    q8 = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=False, quantize='int8')
    got = q8.prefill(vis, kept)['logits']
    # The same forward on a copy of the model whose weights ARE the dequantised int8 ones.
    deq = copy.deepcopy(lm)
    for layer, w8 in zip(deq.model.layers, q8.int8):
        at, mlp = layer.self_attn, layer.mlp
        with torch.no_grad():
            qkv, gu = w8['qkv'].dequantize(), w8['gate_up'].dequantize()
            nq, nk = at.q_proj.weight.shape[0], at.k_proj.weight.shape[0]
            at.q_proj.weight.copy_(qkv[:nq])
            at.k_proj.weight.copy_(qkv[nq:nq + nk])
            at.v_proj.weight.copy_(qkv[nq + nk:])
            at.o_proj.weight.copy_(w8['o'].dequantize())
            mlp.gate_proj.weight.copy_(gu[:mlp.gate_proj.weight.shape[0]])
            mlp.up_proj.weight.copy_(gu[mlp.gate_proj.weight.shape[0]:])
            mlp.down_proj.weight.copy_(w8['down'].dequantize())
    ref = SlotKVPrefill(deq, _ids(), VIS, N, cuda_graphs=False, reuse=False)
    ref.projector = q8.projector
    torch.testing.assert_close(got, ref.prefill(vis, kept)['logits'], atol=1e-4, rtol=1e-4)
    bf = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=False).prefill(vis, kept)['logits']
    assert torch.nn.functional.cosine_similarity(got, bf, dim=0) > 0.99
    with pytest.raises(ValueError):
        SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, quantize='int4')


_INTERPRETED_KERNEL_CHECK = r"""
import torch, triton
from vla_ros.planning import int8
for m, n, k in ((5, 40, 48), (20, 70, 256), (70, 33, 128)):
    gen = torch.Generator().manual_seed(m)
    x, w = torch.randn(m, k, generator=gen), int8.Int8Weight(torch.randn(n, k, generator=gen))
    b, r, y = torch.randn(n, generator=gen), torch.randn(m, n, generator=gen), torch.full((m, n), float('nan'))
    bm, bn, bk = int8._blocks(m, n)
    int8._w8_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        x, w.q, w.scale, b, r, y, m, n, K=k, HAS_BIAS=True, HAS_RES=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    torch.testing.assert_close(y, x @ w.dequantize().t() + b + r, atol=1e-4, rtol=1e-4)
print('kernel ok')
"""


def test_int8_triton_kernel_in_interpreter():
    """The CUDA kernel's tile logic run by Triton's CPU interpreter, in a fresh process (the interpreter
    is chosen at import); skipped where Triton is not installed."""
    pytest.importorskip('triton')
    import subprocess
    env = dict(os.environ, TRITON_INTERPRET='1')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, '-c', _INTERPRETED_KERNEL_CHECK], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    if 'active drivers' in proc.stderr or 'InterpreterError' in proc.stderr:
        pytest.skip(f'Triton interpreter unavailable: {proc.stderr.strip().splitlines()[-1]}')
    assert proc.returncode == 0 and 'kernel ok' in proc.stdout, proc.stderr[-2000:]


def test_speculative_bucket_overflow_equals_the_two_step_prefill(lm):
    """Change test + prefill as one speculative step: a too-small bucket writes nothing and reruns at the
    right one, so every frame equals the unspeculated two-step path."""
    spec = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True, recompute_buckets=(0.25, 0.5, 1.0))
    plain = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True, recompute_buckets=(0.25, 0.5, 1.0),
                          speculate=False)
    assert spec.speculate and not plain.speculate
    kept = _kept(20, 11)
    vis = torch.randn(20, VIS, generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(12)
    for i in range(6):
        if i:
            changed = torch.randperm(20, generator=gen)[:[2, 12, 0, 7, 20][i - 1]]
            vis = vis.clone()
            vis[changed] += torch.randn(len(changed), VIS, generator=gen)
        spec._spec_next = 5 if i in (2, 4) else None       # 12 and 7 changed tokens: too small a bucket
        a, b = plain.prefill(vis, kept), spec.prefill(vis, kept)
        assert spec.last_recomputed == plain.last_recomputed
        torch.testing.assert_close(b['logits'], a['logits'], atol=1e-5, rtol=1e-5)
        assert spec.decode(b).tolist() == plain.decode(a).tolist()
    assert spec.spec_overflows == 2


def test_compiled_layer_functions_equal_the_eager_decoder(lm):
    """compile_layers: the same decoder through two torch.compile'd per-layer functions (traced here with
    the aot_eager backend: dynamo + AOT tracing without a compiler), static then dynamic row counts."""
    eager = SlotKVPrefill(lm, _ids(), VIS, N, decode_tokens=3, cuda_graphs=False, reuse=True)
    comp = SlotKVPrefill(lm, _ids(), VIS, N, decode_tokens=3, cuda_graphs=False, reuse=True,
                         compile_layers='aot_eager')
    assert comp.compiled is not None
    kept = _kept(20, 13)
    vis = torch.randn(20, VIS, generator=torch.Generator().manual_seed(13))
    for i in range(3):
        if i:
            vis = vis.clone()
            vis[[i, 2 * i + 5]] += 1.0
        a, b = eager.prefill(vis, kept), comp.prefill(vis, kept)
        torch.testing.assert_close(b['logits'], a['logits'], atol=1e-4, rtol=1e-4)
        assert comp.decode(b).tolist() == eager.decode(a).tolist()
    assert not comp.compiled[0].failed and not comp.compiled[1].failed and comp.compiled[0].calls > 0


def test_refresh_interval_bounds_the_age_of_reused_slots(lm):
    """refresh_interval R: every prefill recomputes the slots p % R == count % R as well, so a scene that
    keeps changing early tokens converges to the full prefill once every later slot got refreshed."""
    planner = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True, refresh_interval=3)
    stale = SlotKVPrefill(lm, _ids(), VIS, N, cuda_graphs=False, reuse=True)
    kept = _kept(18, 21)
    vis = torch.randn(18, VIS, generator=torch.Generator().manual_seed(21))
    for p in (planner, stale):
        p.prefill(vis, kept)
    vis = vis.clone()
    vis[0] += 1.0                                    # the first token changes once; the rest never do
    counts = []
    for _ in range(4):
        got, old = planner.prefill(vis, kept), stale.prefill(vis, kept)
        counts.append(planner.last_recomputed)
    phases = [(i % 3) for i in range(1, 5)]
    want_counts = [int(((kept % 3) == ph).sum()) + (1 if i == 0 and int(kept[0]) % 3 != ph else 0)
                   for i, ph in enumerate(phases)]
    assert counts == want_counts
    want, _ = _reference(lm, planner, kept, vis)
    torch.testing.assert_close(got['logits'], want, atol=1e-4, rtol=1e-4)     # every slot recomputed since
    assert not torch.allclose(old['logits'], want, atol=1e-4, rtol=1e-4)     # without refresh: still stale
