"""MuJoCo tabletop env and scripted expert: determinism, rendering, limits, success check."""
import numpy as np
import pytest

from vla_ros.config.sim import SimConfig
from vla_ros.sim.arm_env import CUBE_COLOURS, ArmEnv
from vla_ros.sim.expert import TouchExpert


@pytest.fixture(scope='module')
def env():
    e = ArmEnv(SimConfig(), seed=0)
    yield e
    e.close()


def _scene(e):
    return (e.joint_positions(), {c: e.cube_position(c) for c in CUBE_COLOURS}, e.instruction, e.target_cube)


def test_reset_is_deterministic_for_a_seed(env):
    env.reset(seed=11)
    q_a, cubes_a, instr_a, target_a = _scene(env)
    img_a = env.render()
    env.reset(seed=12)
    q_b, cubes_b, _, _ = _scene(env)
    env.reset(seed=11)
    q_c, cubes_c, instr_c, target_c = _scene(env)
    np.testing.assert_array_equal(q_a, q_c)
    for c in CUBE_COLOURS:
        np.testing.assert_array_equal(cubes_a[c], cubes_c[c])
    assert (instr_a, target_a) == (instr_c, target_c)
    np.testing.assert_array_equal(img_a, env.render())
    # Another seed gives another scene.
    assert any(np.linalg.norm(cubes_a[c] - cubes_b[c]) > 1e-3 for c in CUBE_COLOURS)
    assert not np.allclose(q_a, q_b)


def test_cubes_rest_on_table_inside_the_workspace_and_apart(env):
    cfg = env.config
    for seed in range(10):
        env.reset(seed=seed)
        xy = np.array([env.cube_position(c)[:2] for c in CUBE_COLOURS])
        assert np.all(xy[:, 0] >= cfg.cube_x_range[0]) and np.all(xy[:, 0] <= cfg.cube_x_range[1])
        assert np.all(xy[:, 1] >= cfg.cube_y_range[0]) and np.all(xy[:, 1] <= cfg.cube_y_range[1])
        dists = [np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i + 1, 3)]
        assert min(dists) >= cfg.cube_min_separation_m - 1e-9
        assert env.target_cube in CUBE_COLOURS and env.target_cube in env.instruction
    # Cubes stay put when nothing touches them.
    before = {c: env.cube_position(c) for c in CUBE_COLOURS}
    env.step_to(env.joint_positions(), 0.5)
    for c in CUBE_COLOURS:
        assert np.linalg.norm(env.cube_position(c) - before[c]) < 2e-3


def test_render_shows_the_three_cubes(env):
    env.reset(seed=3)
    img = env.render()
    assert img.dtype == np.uint8 and img.shape == (env.config.image_height, env.config.image_width, 3)
    r, g, b = (img[..., i].astype(int) for i in range(3))
    red = (r > 150) & (g < 80) & (b < 80)
    green = (g > 120) & (r < 80) & (b < 100)
    blue = (b > 150) & (r < 80) & (g < 120)
    for name, mask in (('red', red), ('green', green), ('blue', blue)):
        assert mask.sum() >= 4, f'{name} cube not visible ({mask.sum()} px)'
    assert img.std() > 20


def test_commanded_targets_are_clipped_to_joint_limits(env):
    env.reset(seed=0)
    wild = np.array([10.0, -10.0, 10.0, 5.0, -10.0, -5.0, 10.0])
    applied = env.set_target(wild)
    np.testing.assert_array_equal(applied, np.clip(wild, env.joint_lower, env.joint_upper))
    env.step_to(wild, 1.0)
    q = env.joint_positions()
    assert np.all(q >= env.joint_lower - 0.02) and np.all(q <= env.joint_upper + 0.02)
    with pytest.raises(ValueError):
        env.set_target([0.0] * 6)
    with pytest.raises(ValueError):
        env.set_target([np.nan] * 7)


def test_position_servo_tracks_a_reachable_target(env):
    env.reset(seed=1)
    goal = env.joint_positions() + np.array([0.2, -0.1, 0.1, 0.2, -0.2, 0.1, 0.3])
    env.step_to(goal, 2.0)
    np.testing.assert_allclose(env.joint_positions(), goal, atol=0.01)


def test_success_is_false_at_start_and_timeout_ends_the_episode():
    e = ArmEnv(SimConfig(episode_timeout_s=1.0), seed=5, render=False)
    for seed in range(5):
        e.reset(seed=seed)
        assert not e.success() and not e.done()
        assert e.distance_to_goal() > e.config.success_threshold_m
    e.step_to(e.joint_positions(), 1.05)
    assert e.timed_out() and e.done() and not e.success()


def test_expert_chunk_shape_limits_and_speed():
    e = ArmEnv(SimConfig(), seed=2, render=False)
    expert = TouchExpert(e)
    q = e.joint_positions()
    chunk = expert.chunk(q)
    c = expert.config
    assert chunk.shape == (c.horizon, 7) and np.all(np.isfinite(chunk))
    steps = np.diff(np.vstack([q, chunk]), axis=0)
    assert np.abs(steps).max() <= c.max_joint_speed * c.action_dt + 1e-9
    assert np.all(chunk >= e.joint_lower) and np.all(chunk <= e.joint_upper)


def test_expert_succeeds_on_seeded_episodes():
    e = ArmEnv(SimConfig(), seed=0, render=False)
    expert = TouchExpert(e)
    seeds = range(100, 110)
    successes = 0
    for seed in seeds:
        e.reset(seed=seed)
        start_distance = e.distance_to_goal()
        while not e.done():
            e.step_to(expert.chunk(e.joint_positions())[0], expert.config.action_dt)
        successes += e.success()
        if e.success():
            assert e.distance_to_goal() < min(start_distance, e.config.success_threshold_m)
    assert successes / len(seeds) >= 0.9
