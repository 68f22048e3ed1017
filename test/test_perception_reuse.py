"""Temporal reuse + the full pipeline: static scenes reuse, changes get recomputed, keyframes refresh."""
import numpy as np
import pytest
import torch

from vla_ros.config.perception import PerceptionConfig
from vla_ros.models.vision import make_demo_vision_encoder
from vla_ros.perception.encoder import VisionEncoder
from vla_ros.perception.pipeline import PerceptionPipeline
from vla_ros.perception.reuse import patch_similarity
from vla_ros.perception.synthetic import moving_object_sequence, tabletop_frame

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def encoder(tmp_path_factory):
    path = make_demo_vision_encoder(str(tmp_path_factory.mktemp('enc') / 'vision'), seed=0)  # 128 px, 8x8 grid
    return VisionEncoder.from_pretrained(path)


def _pipe(encoder, **kw):
    base = dict(pruning='none', keep_ratio=1.0, reuse_enabled=True, keyframe_interval=0, task_relevant_ratio=0.0)
    base.update(kw)
    return PerceptionPipeline(encoder, PerceptionConfig(**base))


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_patch_similarity_catches_colour_and_brightness_changes():
    a = np.full((3, 12), 0.5, np.float32)
    b = a.copy()
    b[1] *= 0.8                                   # darker: plain cosine would still say 1.0
    b[2, ::3] = 1.0
    b[2, 1::3] = 0.0                              # hue change
    s = patch_similarity(a, b)
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(0.8, abs=1e-6) and s[2] < 0.9


def test_static_scene_reuses_and_matches_full_recompute(encoder):
    frames = list(moving_object_sequence(6, step_px=0))          # nothing moves; +-1 LSB noise
    reuse, full = _pipe(encoder), _pipe(encoder, reuse_enabled=False)
    for i, frame in enumerate(frames):
        r, f = reuse.process(frame), full.process(frame)
        assert r.tokens.shape == f.tokens.shape == (64, 64)
        if i == 0:
            assert r.is_keyframe and r.reuse_ratio == 0.0
            np.testing.assert_allclose(r.tokens, f.tokens, rtol=1e-5, atol=1e-5)
        else:
            assert not r.is_keyframe and r.reuse_ratio >= 0.95
            assert _rel_err(r.tokens, f.tokens) < 0.02


def test_changed_region_is_recomputed_and_tracks_full_recompute(encoder):
    pipe, full = _pipe(encoder, task_relevant_ratio=0.0), _pipe(encoder, reuse_enabled=False)
    before = tabletop_frame(128, cubes={'red': (0, 0)}, cube_px=16)
    after = tabletop_frame(128, cubes={'red': (0, 0), 'blue': (64, 64)}, cube_px=16)  # a cube appears at patch 36
    pipe.process(before)
    r = pipe.process(after)
    plan = pipe.last_reuse_plan
    assert list(plan.recompute) == [36] and 36 not in plan.reuse
    assert r.reuse_ratio == pytest.approx(63 / 64)
    ref = full.process(after).tokens
    old = full.process(before).tokens
    # Reuse is an approximation (static tokens do not see the new cube), but far closer than stale output.
    assert _rel_err(r.tokens[36], ref[36]) < 0.2 * _rel_err(old[36], ref[36])
    assert _rel_err(r.tokens, ref) < _rel_err(old, ref)
    # Drift cannot accumulate: the cache is compared with the pixels it was computed from.
    r = pipe.process(before)
    assert list(pipe.last_reuse_plan.recompute) == [36]


def test_keyframe_refresh_every_n_frames(encoder):
    pipe = _pipe(encoder, keyframe_interval=3)
    flags, reuse = [], []
    for frame in moving_object_sequence(7, step_px=0):
        r = pipe.process(frame)
        flags.append(r.is_keyframe)
        reuse.append(r.reuse_ratio)
    assert flags == [True, False, False, True, False, False, True]
    assert all(reuse[i] == 0.0 for i in (0, 3, 6)) and min(reuse[i] for i in (1, 2, 4, 5)) > 0.9
    pipe.reset()
    assert pipe.process(tabletop_frame()).is_keyframe


def test_staggered_refresh_has_no_keyframe_and_refreshes_every_position_within_n_frames(encoder):
    n = 3
    pipe = _pipe(encoder, keyframe_interval=n, refresh='staggered')
    frames = list(moving_object_sequence(8, step_px=0))          # a static scene: only the refresh recomputes
    first = pipe.process(frames[0])
    assert first.is_keyframe
    last_refresh = {}
    for i, frame in enumerate(frames[1:], start=1):
        r = pipe.process(frame)
        assert not r.is_keyframe
        recomputed = set(int(p) for p in pipe.last_reuse_plan.recompute)
        phase = pipe.reuse.refresh_phase()
        assert recomputed == {p for p in range(64) if p % n == phase}   # one slice per frame, flat cost
        for p in recomputed:
            last_refresh[p] = i
    assert set(last_refresh) == set(range(64))
    # Reused-or-refreshed features track a full recompute (static scene, +-1 LSB noise).
    full = _pipe(encoder, reuse_enabled=False).process(frames[-1]).tokens
    assert _rel_err(r.tokens, full) < 0.02


def test_task_relevant_tokens_always_recomputed(encoder):
    pipe = _pipe(encoder, task_relevant_ratio=0.1)
    pipe.set_instruction('touch the red cube')
    frame = tabletop_frame(128, cubes={'red': (0, 0), 'green': (64, 64)}, cube_px=16)
    pipe.process(frame)
    r = pipe.process(frame)                                      # identical frame
    recomputed = set(pipe.last_reuse_plan.recompute)
    assert len(recomputed) == 7 and 0 in recomputed              # ceil(0.1 * 64); the red-cube patch first
    assert r.reuse_ratio == pytest.approx(57 / 64)
    assert r.relevance is not None and int(np.argmax(r.relevance)) == 0


@pytest.mark.parametrize('pruning', ['attention_topk', 'query', 'spatial_coverage'])
def test_pruned_pipeline_outputs_kept_tokens_with_positions(encoder, pruning):
    pipe = _pipe(encoder, pruning=pruning, keep_ratio=0.25, keyframe_interval=5, task_relevant_ratio=0.1)
    pipe.set_instruction('touch the blue cube')
    frames = list(moving_object_sequence(4))
    results = [pipe.process(f) for f in frames]
    for r in results:
        assert r.tokens.shape == (16, 64) and r.tokens.dtype == np.float32
        assert r.kept_indices.dtype == np.int32 and np.all(np.diff(r.kept_indices) > 0)
        assert r.keep_ratio == 0.25 and r.grid_hw == (8, 8) and r.compute_ms > 0
        assert r.scene_embedding.shape == (64,) and np.linalg.norm(r.scene_embedding) == pytest.approx(1.0)
        assert np.all(np.isfinite(r.tokens))
    assert results[-1].reuse_ratio > 0.3
    if pruning == 'query':                                       # blue cube patches always kept
        blue = set(np.flatnonzero(results[-1].relevance > 0.5))
        assert blue and blue <= set(results[-1].kept_indices)


def test_pipeline_rejects_non_rgb_input(encoder):
    pipe = _pipe(encoder)
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32)):
        with pytest.raises(ValueError):
            pipe.process(bad)
