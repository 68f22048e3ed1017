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
