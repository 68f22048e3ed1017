"""VLM planner through the real loading path: tiny random-weight checkpoints of several families are
saved with save_pretrained and loaded with AutoProcessor/AutoTokenizer + AutoModelForImageTextToText."""
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from vla_ros.config.planning import PlannerConfig  # noqa: E402
from vla_ros.models.vlm import make_demo_vlm  # noqa: E402
from vla_ros.planning.base import PlanRequest, make_planner  # noqa: E402
from vla_ros.planning.vlm import VLMLoadError, VLMPlanner  # noqa: E402

# idefics3 and qwen2_vl generate from inputs_embeds; paligemma exercises the text-only fallback.
FAMILIES = {'idefics3': 'text_and_plan_tokens', 'qwen2_vl': 'text_and_plan_tokens',
            'paligemma': 'plan_tokens_only'}
VIS_DIM = 24
RNG = np.random.default_rng(1)
SCENE_A = RNG.standard_normal((30, VIS_DIM)).astype(np.float32)
SCENE_B = RNG.standard_normal((30, VIS_DIM)).astype(np.float32)


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('vlms')
    return {fam: make_demo_vlm(str(root / fam), family=fam, seed=0) for fam in FAMILIES}


def _cfg(path, **kw):
    kw.setdefault('max_new_tokens', 6)
    return PlannerConfig(type='vlm', model_path=path, num_plan_tokens=5, plan_token_dim=12, **kw)


@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.parametrize('source', ['action_queries', 'last_positions'])
def test_vlm_generates_text_and_plan_tokens(checkpoints, family, source):
    assert os.path.isfile(os.path.join(checkpoints[family], 'config.json'))
    planner = make_planner(_cfg(checkpoints[family], plan_token_source=source), visual_dim=VIS_DIM)
    assert isinstance(planner, VLMPlanner) and planner.family == family
    assert planner.injection == FAMILIES[family]
    out = planner.plan(PlanRequest('touch the red cube', SCENE_A))
    assert isinstance(out.subtask, str) and out.subtask
    assert out.plan_tokens.shape == (5, 12) and out.plan_tokens.dtype == np.float32
    assert np.all(np.isfinite(out.plan_tokens)) and out.plan_tokens.std() > 0.1
    again = planner.plan(PlanRequest('touch the red cube', SCENE_A))
    np.testing.assert_array_equal(out.plan_tokens, again.plan_tokens)      # greedy + eval: deterministic
    assert again.subtask == out.subtask
    # Injected perception tokens condition the plan tokens.
    other = planner.plan(PlanRequest('touch the red cube', SCENE_B))
    assert np.abs(other.plan_tokens - out.plan_tokens).max() > 1e-3
    # So does the instruction.
    blue = planner.plan(PlanRequest('touch the blue cube', SCENE_A))
    assert np.abs(blue.plan_tokens - out.plan_tokens).max() > 1e-3


def test_injected_tokens_change_generated_text_where_supported(checkpoints):
    planner = make_planner(_cfg(checkpoints['idefics3'], max_new_tokens=8), visual_dim=VIS_DIM)
    texts = {planner.plan(PlanRequest('touch the red cube', RNG.standard_normal((30, VIS_DIM)).astype(np.float32)))
             .subtask for _ in range(4)}
    assert len(texts) > 1


def test_many_tokens_are_pooled_and_empty_scene_works(checkpoints):
    planner = make_planner(_cfg(checkpoints['idefics3'], max_visual_tokens=4), visual_dim=VIS_DIM)
    assert planner._visual_embeds(PlanRequest('x', SCENE_A)).shape == (4, planner.hidden_size)
    out = planner.plan(PlanRequest('touch the red cube', np.zeros((0, VIS_DIM), np.float32)))
    assert out.plan_tokens.shape == (5, 12)


def test_same_seed_same_tokens_across_loads(checkpoints):
    a = make_planner(_cfg(checkpoints['qwen2_vl']), VIS_DIM).plan(PlanRequest('touch the red cube', SCENE_A))
    b = make_planner(_cfg(checkpoints['qwen2_vl']), VIS_DIM).plan(PlanRequest('touch the red cube', SCENE_A))
    np.testing.assert_array_equal(a.plan_tokens, b.plan_tokens)


def test_bad_paths_fail_clearly(tmp_path):
    with pytest.raises(VLMLoadError, match='empty'):
        make_planner(_cfg(''), VIS_DIM)
    with pytest.raises(VLMLoadError, match='no config.json'):
        make_planner(_cfg(str(tmp_path)), VIS_DIM)


def test_vlm_planner_layer_drop_and_fp8_parameters(checkpoints):
    from vla_ros.planning.prefill import find_text_decoder
    from vla_ros.planning.quant import Fp8Linear
    req = PlanRequest('touch the red cube', SCENE_A)
    base = make_planner(_cfg(checkpoints['idefics3']), visual_dim=VIS_DIM)
    cut = make_planner(_cfg(checkpoints['idefics3'], drop_final_layers=1), visual_dim=VIS_DIM)
    fp8 = make_planner(_cfg(checkpoints['idefics3'], quantize='fp8'), visual_dim=VIS_DIM)
    assert len(find_text_decoder(cut.model).layers) == 1 == len(find_text_decoder(base.model).layers) - 1
    assert any(isinstance(m, Fp8Linear) for m in find_text_decoder(fp8.model).modules())
    outs = [p.plan(req) for p in (base, cut, fp8)]
    for out in outs:
        assert out.plan_tokens.shape == (5, 12) and np.isfinite(out.plan_tokens).all()
    assert not np.allclose(outs[0].plan_tokens, outs[1].plan_tokens)   # one layer fewer: other features
    cos = float(np.sum(outs[0].plan_tokens * outs[2].plan_tokens)
                / (np.linalg.norm(outs[0].plan_tokens) * np.linalg.norm(outs[2].plan_tokens)))
    assert cos > 0.9                                                     # fp8: close to bf16/fp32
    with pytest.raises(VLMLoadError):
        make_planner(_cfg(checkpoints['idefics3'], drop_final_layers=2), visual_dim=VIS_DIM)


@pytest.mark.parametrize('family', ['idefics3', 'qwen2_vl'])
def test_fast_prefill_plans_equal_the_transformers_path(checkpoints, family):
    """planner.fast_prefill=on on cpu: SlotKVPrefill eagerly (the CUDA path without graphs) gives the same
    sub-task text and plan tokens as transformers generate + forward, over several requests."""
    hf = make_planner(_cfg(checkpoints[family], fast_prefill='off', max_new_tokens=8), visual_dim=VIS_DIM)
    fast = make_planner(_cfg(checkpoints[family], fast_prefill='on', kv_reuse=False, max_new_tokens=8),
                        visual_dim=VIS_DIM)
    assert not hf.fast and fast.fast, fast.fast_reason
    shuffled = np.random.default_rng(3).permutation(30)
    reqs = [PlanRequest('touch the red cube', SCENE_A), PlanRequest('touch the red cube', SCENE_B),
            PlanRequest('touch the blue cube', SCENE_A),
            PlanRequest('touch the red cube', SCENE_A[shuffled], kept_indices=shuffled),
            PlanRequest('touch the red cube', np.zeros((0, VIS_DIM), np.float32))]
    for req in reqs:
        a, b = hf.plan(req), fast.plan(req)
        assert b.subtask == a.subtask
        np.testing.assert_allclose(b.plan_tokens, a.plan_tokens, atol=2e-4, rtol=2e-4)
        with torch.inference_mode():
            ids, _ = fast._plan_fast(req)
            seq = hf._prompt_embeds(req)
            want = hf.model.generate(inputs_embeds=seq, attention_mask=torch.ones(seq.shape[:2], dtype=torch.long),
                                     max_new_tokens=8, do_sample=False).tolist()[0]
        assert ids.tolist() == want                      # the generated token ids themselves
    assert any(len(set(fast._fast)) for _ in [0]) and len(fast._fast) == 2    # one SlotKVPrefill per instruction


def test_fast_prefill_kv_reuse_recomputes_only_changed_tokens(checkpoints):
    hf = make_planner(_cfg(checkpoints['idefics3'], fast_prefill='off'), visual_dim=VIS_DIM)
    fast = make_planner(_cfg(checkpoints['idefics3'], fast_prefill='on', kv_reuse=True, kv_refresh_interval=0),
                        visual_dim=VIS_DIM)
    req = PlanRequest('touch the red cube', SCENE_A)
    first = fast.plan(req)
    slot = next(iter(fast._fast.values()))
    assert slot.last_recomputed == 30
    again = fast.plan(PlanRequest('touch the red cube', SCENE_A.copy()))
    assert slot.last_recomputed == 0                     # nothing changed: only instruction + queries
    np.testing.assert_allclose(again.plan_tokens, first.plan_tokens, atol=1e-5)
    # Only the last perception token changed: causally nothing before it depends on it, so reusing the
    # others' keys/values is exact.
    last = SCENE_A.copy()
    last[-1] += 1.0
    got, want = fast.plan(PlanRequest('touch the red cube', last)), hf.plan(PlanRequest('touch the red cube', last))
    assert slot.last_recomputed == 1
    assert got.subtask == want.subtask
    np.testing.assert_allclose(got.plan_tokens, want.plan_tokens, atol=2e-4, rtol=2e-4)
    # kv_refresh_interval N: a slice of the tokens is recomputed on every plan even when nothing changed.
    refresh = make_planner(_cfg(checkpoints['idefics3'], fast_prefill='on', kv_reuse=True, kv_refresh_interval=4),
                           visual_dim=VIS_DIM)
    counts = []
    for _ in range(5):
        refresh.plan(req)
        counts.append(next(iter(refresh._fast.values())).last_recomputed)
    assert counts == [30, 8, 7, 7, 8]               # all, then p % 4 == 1, 2, 3, 0 among positions 0..29


def test_fast_prefill_falls_back_where_it_cannot_reproduce_transformers(checkpoints):
    gemma = make_planner(_cfg(checkpoints['paligemma'], fast_prefill='on'), visual_dim=VIS_DIM)
    assert not gemma.fast and 'inputs_embeds' in gemma.fast_reason
    last = make_planner(_cfg(checkpoints['idefics3'], fast_prefill='on', plan_token_source='last_positions'),
                        visual_dim=VIS_DIM)
    assert not last.fast and 'last_positions' in last.fast_reason
    auto_cpu = make_planner(_cfg(checkpoints['idefics3'], fast_prefill='auto'), visual_dim=VIS_DIM)
    assert not auto_cpu.fast                             # auto: cuda only
    for planner in (gemma, last, auto_cpu):
        assert planner.plan(PlanRequest('touch the red cube', SCENE_A)).plan_tokens.shape == (5, 12)
