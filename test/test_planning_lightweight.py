"""Lightweight planner: target parsing, plan-token contract, determinism, target/scene sensitivity."""
import subprocess
import sys

import numpy as np
import pytest

from vla_ros.config.planning import PlannerConfig
from vla_ros.planning.base import PlanRequest, make_planner
from vla_ros.planning.lightweight import LightweightPlanner, parse_instruction

RNG = np.random.default_rng(3)
SCENE = RNG.standard_normal((24, 32)).astype(np.float32)


def _plan(instruction, scene=SCENE, **cfg):
    planner = make_planner(PlannerConfig(**cfg), visual_dim=32)
    return planner.plan(PlanRequest(instruction=instruction, visual_tokens=scene))


@pytest.mark.parametrize('text, colour, obj, verb', [
    ('touch the red cube', 'red', 'cube', 'touch'),
    ('Reach the BLUE block!', 'blue', 'cube', 'reach'),
    ('please push the green box to the left', 'green', 'cube', 'push'),
    ('go to the cube that is yellow', 'yellow', 'cube', 'reach'),
    ('pick up the red cube and place it on the green target', 'red', 'cube', 'pick up'),
    ('wave hello', None, 'object', 'reach'),
])
def test_parse_instruction(text, colour, obj, verb):
    parsed = parse_instruction(text)
    assert (parsed.colour, parsed.obj, parsed.verb) == (colour, obj, verb)


def test_subtask_names_the_target():
    assert _plan('touch the red cube').subtask == 'touch the red cube'
    assert _plan('reach the blue block').subtask == 'reach the blue cube'
    assert 'no object' in _plan('wave hello').subtask


@pytest.mark.parametrize('n, dim', [(1, 16), (5, 64), (12, 32)])
def test_plan_tokens_always_have_the_configured_shape(n, dim):
    out = _plan('touch the green cube', num_plan_tokens=n, plan_token_dim=dim)
    assert out.plan_tokens.shape == (n, dim) and out.plan_tokens.dtype == np.float32
    assert np.all(np.isfinite(out.plan_tokens)) and np.abs(out.plan_tokens).sum() > 0
    empty = _plan('touch the green cube', scene=np.zeros((0, 32), np.float32), num_plan_tokens=n, plan_token_dim=dim)
    assert empty.plan_tokens.shape == (n, dim)


def test_deterministic_across_instances_and_processes():
    a = _plan('touch the blue cube').plan_tokens
    b = _plan('touch the blue cube').plan_tokens
    np.testing.assert_array_equal(a, b)
    code = ('import numpy as np; from vla_ros.config.planning import PlannerConfig; '
            'from vla_ros.planning.lightweight import LightweightPlanner; from vla_ros.planning.base import PlanRequest; '
            'scene = np.random.default_rng(3).standard_normal((24, 32)).astype(np.float32); '
            'out = LightweightPlanner(PlannerConfig(), 32).plan(PlanRequest("touch the blue cube", scene)); '
            'print(repr(out.plan_tokens.astype(float).ravel().tolist()))')
    other = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                           env={'PYTHONHASHSEED': '123', 'PATH': ''})
    np.testing.assert_allclose(np.array(eval(other.stdout.strip().splitlines()[-1])), a.ravel(), rtol=0, atol=1e-6)


def test_targets_give_distinguishable_tokens_and_synonyms_agree():
    tokens = {c: _plan(f'touch the {c} cube').plan_tokens for c in ('red', 'green', 'blue')}
    colour_slot = {c: t[0] for c, t in tokens.items()}
    for a in colour_slot:
        for b in colour_slot:
            cos = colour_slot[a] @ colour_slot[b] / np.linalg.norm(colour_slot[a]) / np.linalg.norm(colour_slot[b])
            assert (cos > 0.999) if a == b else (cos < 0.5), (a, b, cos)
    # Same target, different phrasing: identical target slots (colour, object).
    np.testing.assert_array_equal(_plan('reach the red block').plan_tokens[:2], tokens['red'][:2])


def test_scene_tokens_change_only_the_scene_slots():
    other_scene = RNG.standard_normal((24, 32)).astype(np.float32)
    a, b = _plan('touch the red cube').plan_tokens, _plan('touch the red cube', scene=other_scene).plan_tokens
    np.testing.assert_array_equal(a[:4], b[:4])       # instruction slots
    assert np.abs(a[4:] - b[4:]).max() > 0.1           # scene slots


def test_kept_indices_reorder_tokens_into_raster_order():
    planner = LightweightPlanner(PlannerConfig(), 32)
    perm = RNG.permutation(24)
    ordered = planner.plan(PlanRequest('touch the red cube', SCENE, kept_indices=np.arange(24)))
    shuffled = planner.plan(PlanRequest('touch the red cube', SCENE[perm], kept_indices=perm.astype(np.int32)))
    np.testing.assert_allclose(ordered.plan_tokens, shuffled.plan_tokens, atol=1e-5)


def test_wrong_visual_dim_is_rejected():
    planner = LightweightPlanner(PlannerConfig(), 32)
    with pytest.raises(ValueError, match='visual token dim'):
        planner.plan(PlanRequest('touch the red cube', np.ones((4, 16), np.float32)))
