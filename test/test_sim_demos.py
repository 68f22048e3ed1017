"""Expert demo collection, featurisation through the real perception/planner, and the no-ROS eval loop."""
import numpy as np
import pytest
import torch

from vla_ros.config import ActionConfig, PerceptionConfig, PlannerConfig, SimConfig
from vla_ros.sim.arm_env import ArmEnv
from vla_ros.sim.demos import Episode, collect_episode, evaluate_policy, featurize_episode
from vla_ros.sim.expert import TouchExpert

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def env():
    e = ArmEnv(SimConfig(image_width=128, image_height=128), seed=0)
    yield e
    e.close()


@pytest.fixture(scope='module')
def episode(env):
    return collect_episode(env, TouchExpert(env), seed=21, noise_std=0.0, hold_steps=3)


@pytest.fixture(scope='module')
def perception(tmp_path_factory):
    from vla_ros.models.vision import make_demo_vision_encoder
    from vla_ros.perception.encoder import VisionEncoder
    from vla_ros.perception.pipeline import PerceptionPipeline
    from vla_ros.planning.base import make_planner

    path = str(tmp_path_factory.mktemp('enc') / 'vision_encoder')
    make_demo_vision_encoder(path, seed=0)
    encoder = VisionEncoder.from_pretrained(path)
    return PerceptionPipeline(encoder, PerceptionConfig()), make_planner(PlannerConfig(), encoder.hidden_size)


def test_collected_episode_is_consistent(env, episode):
    t = len(episode.proprio)
    cfg = ActionConfig()
    assert episode.success and 0 < episode.steps_to_success <= t
    assert t == episode.steps_to_success + 3 + 1 or t == episode.steps_to_success + 3
    assert episode.images.shape == (t, 128, 128, 3) and episode.images.dtype == np.uint8
    assert episode.chunks.shape == (t, cfg.horizon, 7) and np.all(np.isfinite(episode.chunks))
    assert 'cube' in episode.instruction or 'block' in episode.instruction
    # Without noise each executed target is the chunk's first step, so the next proprio moves towards it.
    err_before = np.abs(episode.chunks[:-1, 0] - episode.proprio[:-1]).sum()
    err_after = np.abs(episode.chunks[:-1, 0] - episode.proprio[1:]).sum()
    assert err_after < err_before
    # Round trip through the on-disk layout.
    again = Episode.from_arrays(episode.to_arrays())
    np.testing.assert_array_equal(again.chunks, episode.chunks)
    assert again.instruction == episode.instruction and again.seed == 21


def test_decision_stride_records_every_nth_step_and_still_succeeds(env, episode):
    """stride 2: the expert decides every 2 action steps, executing its chunk's first two rows in between, so the
    episode needs about half the samples, each 2 action steps of sim time apart."""
    strided = collect_episode(env, TouchExpert(env), seed=21, noise_std=0.0, hold_steps=3, stride=2)
    assert strided.success
    assert 0.4 * episode.steps_to_success <= strided.steps_to_success <= 0.6 * episode.steps_to_success, \
        (strided.steps_to_success, episode.steps_to_success)
    # two action steps of sim time per decision until success (once the cube is touched, the hold decisions
    # step one action step each: the inner loop stops on success)
    dt = TouchExpert(env).config.action_dt
    n, held = len(strided.proprio), len(strided.proprio) - strided.steps_to_success
    assert abs(env.elapsed_s - dt * (2 * (n - held) + held)) <= dt + 1e-9, (env.elapsed_s, n, held)
    with pytest.raises(ValueError):
        collect_episode(env, TouchExpert(env), seed=21, stride=0)


def test_noise_injection_changes_states_but_labels_stay_expert(env):
    expert = TouchExpert(env)
    noisy = collect_episode(env, expert, seed=22, noise_std=0.02, hold_steps=0)
    clean = collect_episode(env, expert, seed=22, noise_std=0.0, hold_steps=0)
    n = min(len(noisy.proprio), len(clean.proprio))
    assert not np.allclose(noisy.proprio[1:n], clean.proprio[1:n])
    # Labels are what the expert says from the (perturbed) measured state.
    env.reset(seed=22)
    np.testing.assert_allclose(noisy.chunks[0], expert.chunk(noisy.proprio[0]), atol=1e-5)


def test_featurize_uses_real_perception_and_planner(episode, perception):
    pipeline, planner = perception
    samples = featurize_episode(episode, pipeline, planner, plan_every=4)
    assert len(samples) == len(episode.proprio)
    s = samples[0]
    cfg = PlannerConfig()
    assert s['plan_tokens'].shape == (cfg.num_plan_tokens, cfg.plan_token_dim)
    assert s['vis_tokens'].ndim == 2 and s['vis_tokens'].shape[1] == pipeline.encoder.hidden_size
    assert 0 < s['vis_tokens'].shape[0] <= pipeline.encoder.grid_hw[0] * pipeline.encoder.grid_hw[1]
    np.testing.assert_array_equal(samples[5]['actions'], episode.chunks[5])
    np.testing.assert_array_equal(samples[5]['proprio'], episode.proprio[5])
    # Plans are held between planner calls; the arm moves, so visual tokens change over the episode.
    np.testing.assert_array_equal(samples[1]['plan_tokens'], samples[0]['plan_tokens'])
    assert not np.allclose(samples[0]['vis_tokens'].mean(0), samples[-1]['vis_tokens'].mean(0))


class _OracleHead:
    """Stands in for the trained head: returns the expert's chunk for the measured joints."""

    def __init__(self, expert):
        self.expert = expert

    def eval(self):
        return self

    def predict_actions(self, vis, vis_mask, plan, proprio, **_kwargs):
        q = np.asarray(proprio[0], dtype=np.float64)
        return torch.as_tensor(self.expert.chunk(q)[None], dtype=torch.float32)


def test_eval_loop_succeeds_with_expert_actions(perception):
    """The no-ROS closed loop (ControlLoop chunking + safety) must not be what limits the policy."""
    pipeline, planner = perception
    env = ArmEnv(SimConfig(episode_timeout_s=8.0), seed=0)
    try:
        result = evaluate_policy(env, pipeline, planner, _OracleHead(TouchExpert(env)), ActionConfig(), [30, 31])
    finally:
        env.close()
    assert result.successes == [True, True], result.summary()
    assert all(d < env.config.success_threshold_m for d in result.final_distances)
    assert all(t < 8.0 for t in result.elapsed_s)


def test_observation_delay_holds_the_arm_until_the_first_frame_arrives(perception):
    """observation_delay_s: a frame's tokens reach the loop that much later (sim time); the arm holds until
    the first chunk, then the (proprio-driven) expert still gets there."""
    pipeline, planner = perception
    env = ArmEnv(SimConfig(episode_timeout_s=1.5), seed=0)
    seen = {}
    try:
        for delay in (0.0, 0.5):
            frames = []
            evaluate_policy(env, pipeline, planner, _OracleHead(TouchExpert(env)), ActionConfig(), [30],
                            on_perceive=lambda image, q: frames.append(np.array(q)), observation_delay_s=delay)
            seen[delay] = np.array(frames)
        with pytest.raises(ValueError):
            evaluate_policy(env, pipeline, planner, _OracleHead(TouchExpert(env)), ActionConfig(), [30],
                            observation_delay_s=-0.1)
    finally:
        env.close()
    # frames every 0.1 s: the delayed loop has not moved by the frame at 0.5 s, the ideal one has by 0.2 s
    moved = {d: np.abs(f - f[0]).max(axis=1) for d, f in seen.items()}
    assert moved[0.0][2] > 1e-3, moved[0.0][:6]
    assert moved[0.5][:6].max() < 1e-4, moved[0.5][:6]
    assert moved[0.5][8] > 1e-3, moved[0.5][:10]


def test_plan_cache_answers_plan_requests_while_the_scene_holds(perception):
    """plan_cache: as the planner node's runner, a cache hit answers instead of the planner; cleared per episode."""
    from vla_ros.planning.plan_cache import PlanCache

    pipeline, planner = perception

    class Counting:
        calls = 0

        def plan(self, request):
            Counting.calls += 1
            return planner.plan(request)

    env = ArmEnv(SimConfig(episode_timeout_s=2.0), seed=0)
    try:
        calls = {}
        for name, cache in (('off', None), ('loose', PlanCache(-1.0, 0.0)), ('strict', PlanCache(1.01, 0.0))):
            Counting.calls = 0
            evaluate_policy(env, pipeline, Counting(), _OracleHead(TouchExpert(env)), ActionConfig(), [30, 31],
                            plan_cache=cache)
            calls[name] = Counting.calls
            if cache is not None:
                assert cache.stats.hits + cache.stats.misses == calls['off']
    finally:
        env.close()
    assert calls['off'] >= 6                      # 2 Hz over 2 episodes
    assert calls['loose'] == 2                    # any scene is a hit: one plan per episode (cleared at reset)
    assert calls['strict'] == calls['off']        # nothing is similar enough: every request plans


def test_inference_delay_runs_one_slow_chunk_at_a_time(perception):
    """inference_delay_s: each chunk takes over that long after its inputs and the head infers one chunk at a
    time, so a 0.5 s head over 1.5 s makes 3 chunks (0, 0.5, 1.0 s) where an instant one makes one per frame,
    and the arm holds until the first chunk takes over."""
    pipeline, planner = perception
    env = ArmEnv(SimConfig(episode_timeout_s=1.5), seed=0)
    calls, frames = {}, {}
    try:
        for delay in (0.0, 0.5):
            head = _OracleHead(TouchExpert(env))
            calls[delay] = 0
            frames[delay] = []

            def predict(*args, _predict=head.predict_actions, _delay=delay, **kwargs):
                calls[_delay] += 1
                return _predict(*args, **kwargs)
            head.predict_actions = predict
            evaluate_policy(env, pipeline, planner, head, ActionConfig(), [30], inference_delay_s=delay,
                            on_perceive=lambda image, q, _d=delay: frames[_d].append(np.array(q)))
        with pytest.raises(ValueError):
            evaluate_policy(env, pipeline, planner, _OracleHead(TouchExpert(env)), ActionConfig(), [30],
                            inference_delay_s=-0.1)
    finally:
        env.close()
    assert calls[0.0] >= 14 and calls[0.5] == 3, calls
    moved = np.abs(np.array(frames[0.5]) - frames[0.5][0]).max(axis=1)     # frames every 0.1 s
    assert moved[:5].max() < 1e-4 and moved[7] > 1e-3, moved[:10]
