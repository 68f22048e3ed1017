"""The device (torch) perception path decides exactly as the numpy path on the same inputs and frames."""
import numpy as np
import pytest
import torch

from vla_ros.config.perception import PerceptionConfig
from vla_ros.models.vision import make_demo_vision_encoder
from vla_ros.perception import pruning, torch_ops
from vla_ros.perception.device_pipeline import DevicePerceptionPipeline, bucket_up, make_pipeline
from vla_ros.perception.encoder import VisionEncoder
from vla_ros.perception.pipeline import PerceptionPipeline
from vla_ros.perception.reuse import TemporalReuse, patch_similarity
from vla_ros.perception.synthetic import moving_object_sequence

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def encoder(tmp_path_factory):
    path = make_demo_vision_encoder(str(tmp_path_factory.mktemp('enc') / 'vision'), seed=0)  # 128 px, 8x8 grid
    return VisionEncoder.from_pretrained(path)


def _scores(rng, n, ties=False):
    s = rng.random(n)
    if ties:
        s = np.round(s * 4) / 4          # many exact ties: the tie rule must match too
    return s


@pytest.mark.parametrize('seed', range(6))
def test_budget_and_topk_match_numpy(seed):
    rng = np.random.default_rng(seed)
    for n in (64, 729):
        s = _scores(rng, n, ties=seed % 2 == 1)
        if seed == 5:
            s[:] = 0.0                    # zero mass: the cap
        st = torch.from_numpy(s)
        for ratio in (0.1, 0.5, 0.9):
            cap = torch_ops.budget_cap(n, ratio)
            assert cap == pruning.token_budget(n, ratio)
            for mass in (0.3, 0.9):
                for min_tokens in (1, 8, 500):
                    want = pruning.token_budget(n, ratio, s, True, mass, min_tokens)
                    assert int(torch_ops.adaptive_budget(st, cap, mass, min_tokens)) == want
            np.testing.assert_array_equal(torch_ops.top_indices(st, cap).numpy(), pruning._top(s, cap))


@pytest.mark.parametrize('grid', [(8, 8), (27, 27), (5, 7)])
@pytest.mark.parametrize('ties', [False, True])
def test_select_tokens_every_strategy_matches_numpy(grid, ties):
    rng = np.random.default_rng(grid[0] * 10 + ties)
    n = grid[0] * grid[1]
    att = _scores(rng, n, ties)
    att = att / att.sum()
    rel = np.where(rng.random(n) < 0.1, rng.random(n), 0.0)
    for strategy in pruning.STRATEGIES:
        for budget in (1, n // 4, n // 2, n):
            for relevance in (None, rel):
                for frac in (0.0, 0.5, 1.0):
                    want, _ = pruning.select_tokens(np.zeros((n, 1)), strategy, budget, grid, att, relevance, frac)
                    got = torch_ops.select_tokens(strategy, budget, grid, torch.from_numpy(att),
                                                  None if relevance is None else torch.from_numpy(relevance), frac)
                    np.testing.assert_array_equal(got.numpy(), want, err_msg=f'{strategy} {budget} {frac}')
                    if strategy != 'spatial_coverage':
                        break


def test_reuse_mask_matches_temporal_reuse():
    rng = np.random.default_rng(3)
    n, p = 64, 48
    old = rng.random((n, p)).astype(np.float32)
    new = old.copy()
    new[rng.random(n) < 0.3] *= 0.9
    rel = rng.random(n)
    kept = np.sort(rng.choice(n, 40, replace=False))
    np.testing.assert_allclose(torch_ops.patch_similarity(torch.from_numpy(new), torch.from_numpy(old)).numpy(),
                               patch_similarity(new, old))
    reuse = TemporalReuse(0.98, 0, 0.1)
    cache = reuse.ensure_cache(n, 1, 4, p)
    cache.pixels[:] = old
    cache.valid[:] = rng.random(n) < 0.9
    plan = reuse.plan(kept, new, rel)
    static = torch_ops.reuse_static_mask(torch.from_numpy(kept), torch.from_numpy(new), torch.from_numpy(old),
                                         torch.from_numpy(cache.valid), 0.98, torch.from_numpy(rel), 0.1)
    np.testing.assert_array_equal(kept[static.numpy()], plan.reuse)
    np.testing.assert_array_equal(kept[~static.numpy()], plan.recompute)


def test_bucket_up():
    assert bucket_up(37, 100, ()) == 37
    assert bucket_up(37, 100, (0.25, 0.5)) == 50
    assert bucket_up(1, 364, (0.0625, 0.125)) == 23
    assert bucket_up(90, 100, (0.25, 0.5)) == 100


CASES = {
    'coverage+reuse': dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True),
    'query+reuse': dict(pruning='query', keep_ratio=0.4, reuse_enabled=True),
    'topk': dict(pruning='attention_topk', keep_ratio=0.5, reuse_enabled=False),
    'adaptive+reuse': dict(pruning='spatial_coverage', keep_ratio=0.6, adaptive_budget=True, adaptive_mass=0.5,
                           reuse_enabled=True),
    'full+reuse': dict(pruning='none', keep_ratio=1.0, reuse_enabled=True),
    'coverage+staggered': dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True, refresh='staggered'),
    'staggered+buckets': dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True, refresh='staggered',
                              static_shapes=True),
}


@pytest.mark.parametrize('case', list(CASES))
@pytest.mark.parametrize('instruction', ['touch the red cube', 'move to the left'])
def test_device_pipeline_matches_numpy_pipeline_on_the_same_frames(encoder, case, instruction):
    cfg = dict(keyframe_interval=5, **CASES[case])
    ref = PerceptionPipeline(encoder, PerceptionConfig(ops='numpy', **cfg))
    dev = make_pipeline(encoder, PerceptionConfig(ops='torch', **cfg))
    assert isinstance(dev, DevicePerceptionPipeline) and not isinstance(ref, DevicePerceptionPipeline)
    for pipe in (ref, dev):
        pipe.set_instruction(instruction)
    reused = 0
    for frame in moving_object_sequence(12, size=encoder.image_size):
        a, b = ref.process(frame), dev.process(frame)
        np.testing.assert_array_equal(b.kept_indices, a.kept_indices)
        assert b.is_keyframe == a.is_keyframe
        assert b.reuse_ratio == pytest.approx(a.reuse_ratio)
        np.testing.assert_allclose(b.tokens, a.tokens, atol=2e-5, rtol=1e-4)
        if a.relevance is None:      # colour relevance: on the device (dev.device_relevance) or the host
            assert b.relevance is None
        else:
            np.testing.assert_array_equal(b.relevance, a.relevance)
        reused += b.reuse_ratio > 0
    assert reused >= 5 if CASES[case]['reuse_enabled'] else reused == 0
    assert dev.device_relevance == (case not in ('query+reuse', 'adaptive+reuse'))


def test_device_hsv_matches_opencv_on_every_colour():
    import cv2
    every = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([every >> 16, (every >> 8) & 255, every & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    for rows in np.array_split(np.arange(4096), 8):
        part = rgb[rows]
        want = cv2.cvtColor(np.ascontiguousarray(part), cv2.COLOR_RGB2HSV)
        got = torch.stack(torch_ops.rgb_to_hsv_u8(torch.from_numpy(part)), dim=-1).numpy()
        np.testing.assert_array_equal(got, want)


def test_device_colour_relevance_matches_host_on_frames():
    from vla_ros.perception.relevance import MIN_SATURATION, MIN_VALUE, _hue_table, colour_relevance
    for colours in (['red'], ['blue', 'green']):
        table = torch.from_numpy(_hue_table(tuple(colours)).copy())
        for frame in moving_object_sequence(3, size=72, seed=2):
            for grid in ((8, 8), (9, 9), (5, 7)):
                want = colour_relevance(frame, grid, colours)
                got = torch_ops.colour_relevance(torch.from_numpy(frame), grid, table, MIN_SATURATION, MIN_VALUE)
                np.testing.assert_array_equal(got.numpy(), want)


def test_speculative_bucket_overflow_reruns_to_the_same_result(encoder):
    cfg = dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True, refresh='staggered',
               keyframe_interval=4, static_shapes=True, recompute_buckets=[0.125, 0.5, 1.0])
    spec = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', **cfg))
    plain = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', speculative_bucket=False, **cfg))
    assert spec.speculate and not plain.speculate
    for pipe in (spec, plain):
        pipe.set_instruction('touch the red cube')
    for i, frame in enumerate(moving_object_sequence(10, size=encoder.image_size)):
        spec._spec_next = 4 if i % 2 else None        # every other frame: a bucket too small for the changes
        a, b = plain.process(frame), spec.process(frame)
        np.testing.assert_array_equal(b.kept_indices, a.kept_indices)
        assert b.reuse_ratio == a.reuse_ratio and b.is_keyframe == a.is_keyframe
        np.testing.assert_allclose(b.tokens, a.tokens, atol=1e-6)       # (another bucket: other padding)
        np.testing.assert_allclose(b.scene_embedding, a.scene_embedding, atol=1e-6)
        assert spec.syncs_last_frame <= plain.syncs_last_frame
    assert spec.spec_overflows >= 2


def _assert_same_on_frames(ref, other, size, frames=6):
    """Both pipelines, one instruction, the same moving frames: same kept tokens, reuse and features."""
    for pipe in (ref, other):
        pipe.set_instruction('touch the red cube')
    for frame in moving_object_sequence(frames, size=size):
        a, b = ref.process(frame), other.process(frame)
        np.testing.assert_array_equal(b.kept_indices, a.kept_indices)
        assert b.reuse_ratio == pytest.approx(a.reuse_ratio)
        np.testing.assert_allclose(b.tokens, a.tokens, atol=2e-5, rtol=1e-4)


def test_static_shapes_pad_but_compute_the_same_features(encoder):
    cfg = dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True, keyframe_interval=0)
    exact = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', **cfg))
    padded = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', static_shapes=True,
                                                               recompute_buckets=[0.5, 1.0], **cfg))
    _assert_same_on_frames(exact, padded, encoder.image_size)
    # A keep bucket rounds the adaptive budget up: more tokens, never fewer, and a bucket size.
    adaptive = dict(cfg, adaptive_budget=True, adaptive_mass=0.3)
    exact = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', **adaptive))
    bucketed = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', static_shapes=True,
                                                                 keep_buckets=[0.25, 0.5], **adaptive))
    frame = next(moving_object_sequence(1, size=encoder.image_size))
    a, b = exact.process(frame), bucketed.process(frame)
    assert len(b.kept_indices) in (16, 32) and len(b.kept_indices) >= len(a.kept_indices)


@pytest.mark.parametrize('strategy', ['query', 'spatial_coverage'])
@pytest.mark.parametrize('ops', ['numpy', 'torch'])
def test_instruction_relevant_tokens_are_never_pruned_nor_reused(encoder, strategy, ops):
    cfg = PerceptionConfig(ops=ops, pruning=strategy, keep_ratio=0.25, reuse_enabled=True, keyframe_interval=0,
                           task_relevant_ratio=0.1)
    pipe = make_pipeline(encoder, cfg)
    pipe.set_instruction('touch the red cube')
    for i, frame in enumerate(moving_object_sequence(4, size=encoder.image_size)):
        result = pipe.process(frame)
        relevant = np.flatnonzero(result.relevance >= 0.5)
        assert len(relevant) >= 1
        assert set(relevant) <= set(result.kept_indices.tolist())
        if i and ops == 'numpy':
            assert not set(relevant) & set(pipe.last_reuse_plan.reuse.tolist())


def test_triton_fill_matches_torch_loop_in_interpreter(monkeypatch):
    """The CUDA kernel's logic, run by Triton's CPU interpreter (skipped where Triton is not installed)."""
    pytest.importorskip('triton')
    import importlib

    from vla_ros.perception import fps_triton
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    interpreted = importlib.reload(fps_triton)
    try:
        if not interpreted.triton_fps_available():
            pytest.skip('no usable Triton')
        rng = np.random.default_rng(0)
        n = 64
        sal = torch.from_numpy(np.round(rng.random(n) * 3) / 3)
        dists = torch_ops.grid_distances(8, 8, 'cpu')
        first = torch_ops.top_indices(sal, 12)
        taken = torch.zeros(n, dtype=torch.bool)
        taken[first] = True
        dist = dists[first].min(dim=0).values
        want = torch_ops.spatial_coverage(sal / sal.abs().max(), 24, (8, 8), 0.5, use_triton=False)[None]
        try:
            picks = interpreted.farthest_point_fill(dist, taken, 1e-3 * sal / sal.abs().max(), 12, 8)
        except Exception as exc:  # noqa: BLE001 - an interpreter that cannot run this kernel
            pytest.skip(f'Triton interpreter unavailable: {exc}')
        got = torch.sort(torch.cat([first, picks])).values[None]
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    finally:
        monkeypatch.delenv('TRITON_INTERPRET')
        importlib.reload(fps_triton)


def test_precapture_leaves_no_state_behind(encoder):
    cfg = PerceptionConfig(ops='torch', pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True,
                           static_shapes=True, keyframe_interval=4)
    warmed, fresh = DevicePerceptionPipeline(encoder, cfg), DevicePerceptionPipeline(encoder, cfg)
    for pipe in (warmed, fresh):
        pipe.set_instruction('touch the red cube')
    other = next(moving_object_sequence(1, size=encoder.image_size, seed=5))
    warmed.precapture(other)
    for frame in moving_object_sequence(6, size=encoder.image_size):
        a, b = fresh.process(frame), warmed.process(frame)
        assert a.is_keyframe == b.is_keyframe and a.reuse_ratio == b.reuse_ratio
        np.testing.assert_allclose(b.tokens, a.tokens, atol=1e-6)


def test_captured_sampler_falls_back_to_sample_on_cpu():
    from vla_ros.action.flow_graph import CapturedSampler
    from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
    torch.manual_seed(0)
    head = FlowMatchingActionHead(FlowHeadConfig(vis_dim=16)).eval()
    sampler = CapturedSampler(head)
    vis, mask = torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool)
    plan, proprio = torch.randn(1, 2, 64), torch.randn(1, 7)
    torch.manual_seed(1)
    want = head.sample(vis, mask, plan, proprio)
    torch.manual_seed(1)
    got = sampler(vis, mask, plan, proprio)
    torch.testing.assert_close(got, want)
    assert sampler.graphs.eager_calls == 1 and sampler.graphs.captures == 0


def test_numpy_hsv_fallback_is_within_one_of_opencv(monkeypatch):
    import cv2

    from vla_ros.perception import relevance
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    want = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(int)
    monkeypatch.setattr(relevance, 'cv2', None)
    got = relevance.rgb_to_hsv_u8(img).astype(int)
    np.testing.assert_array_equal(got[..., 2], want[..., 2])
    dh = np.abs(got[..., 0] - want[..., 0])
    assert np.minimum(dh, 180 - dh).max() <= 1 and np.abs(got[..., 1] - want[..., 1]).max() <= 1


def test_compiled_encoder_layers_match_the_numpy_pipeline(encoder, monkeypatch):
    """compile_layers: every encoder layer through one torch.compile'd function (aot_eager backend here:
    dynamo + AOT tracing, no compiler), inside the speculative staggered path; same decisions and tokens."""
    monkeypatch.setattr(DevicePerceptionPipeline, 'compile_backend', 'aot_eager')
    cfg = dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True, refresh='staggered',
               keyframe_interval=4, static_shapes=True)
    ref = PerceptionPipeline(encoder, PerceptionConfig(ops='numpy', **cfg))
    dev = DevicePerceptionPipeline(encoder, PerceptionConfig(ops='torch', compile_layers=True, **cfg))
    assert dev.compiled
    _assert_same_on_frames(ref, dev, encoder.image_size)
    assert encoder._compiled_layer.calls > 0 and not encoder._compiled_layer.failed
