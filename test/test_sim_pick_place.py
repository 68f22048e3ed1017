"""Pick-and-place on the sim arm: the gripper really holds the cube, success needs the cube on the
named pad and released, the scripted expert succeeds, and the touch task is unchanged."""
import numpy as np
import pytest

from vla_ros.config import ConfigError, SimConfig
from vla_ros.config.tasks import task_config
from vla_ros.sim.arm_env import GRIPPER_OPEN, ArmEnv
from vla_ros.sim.pick_place_expert import GRIPPER_CLOSED, PickPlaceExpert
from vla_ros.sim.tasks import CUBE_COLOURS, PAD_COLOURS


def make_env(seed=0, render=False, **overrides):
    cfg = task_config(SimConfig, 'sim', 'pick_place')
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return ArmEnv(cfg, seed=seed, render=render)


def run_expert(env, expert, until, max_steps=400):
    for _ in range(max_steps):
        if until():
            return True
        env.step_to(expert.chunk(env.joint_positions())[0], expert.config.action_dt)
    return until()


def test_layout_instruction_and_config():
    env = make_env(seed=11)
    assert env.joint_names[-1] == 'finger_joint1' and len(env.joint_positions()) == 8
    assert env.joint_positions()[-1] == pytest.approx(GRIPPER_OPEN, abs=1e-6)
    assert env.task.target_cube in CUBE_COLOURS and env.task.target_pad in PAD_COLOURS
    assert env.instruction.index(env.task.target_cube) < env.instruction.index(env.task.target_pad)
    objects = [env.cube_position(c)[:2] for c in CUBE_COLOURS] + [env.task.pad_position(p)[:2] for p in PAD_COLOURS]
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(objects) for b in objects[i + 1:]]
    assert min(gaps) > 0.08                                   # nothing starts on a pad or on another cube
    assert not env.success() and env.distance_to_goal() > 0.05
    seen = {(make_env(seed=s).task.target_cube, make_env(seed=s).task.target_pad) for s in range(12)}
    assert len(seen) >= 4                                     # both words of the instruction vary
    bad = SimConfig(task='pick_place')                        # without the gripper joint: refused
    with pytest.raises(ConfigError, match='finger_joint1'):
        bad.validate()


def test_gripper_holds_the_cube_when_lifted_and_drops_it_when_opened():
    env = make_env(seed=4)
    expert = PickPlaceExpert(env)
    cube = env.task.target_cube
    z0 = env.cube_position(cube)[2]
    assert run_expert(env, expert, lambda: env.cube_position(cube)[2] > z0 + 0.06), "cube never lifted"
    assert all(env.task.finger_contacts()) and expert.phase(env.joint_positions()) == 'carry'
    assert env.gripper_opening() == pytest.approx(env.cube_half_size, abs=0.004)   # fingers stopped by the cube
    # Hold still for 1 s: the cube stays in the hand (does not slip out under gravity).
    q_hold = env.joint_positions()
    q_hold[-1] = GRIPPER_CLOSED                               # keep squeezing (the command, not the opening)
    env.step_to(q_hold, 1.0)
    assert env.cube_position(cube)[2] > z0 + 0.045
    assert np.linalg.norm(env.cube_position(cube)[:2] - env.ee_position()[:2]) < 0.01
    # Open in the air: the cube falls back to the table.
    q_open = q_hold.copy()
    q_open[-1] = GRIPPER_OPEN
    env.step_to(q_open, 1.0)
    assert env.cube_position(cube)[2] < z0 + 0.01 and not any(env.task.finger_contacts())


def test_success_needs_the_cube_on_the_named_pad_and_released():
    env = make_env(seed=2)
    expert = PickPlaceExpert(env)
    # Until the fingers let go, a cube resting on the pad is not a success.
    assert run_expert(env, expert, lambda: expert.phase(env.joint_positions()) == 'release'), 'never released'
    assert env.task.cube_on_pad() or env.distance_to_goal() < 0.01
    assert not env.success()
    assert run_expert(env, expert, env.success, max_steps=60)
    assert env.distance_to_goal() < env.config.place_tolerance_m
    # The same cube on the OTHER pad is no success.
    other = [p for p in PAD_COLOURS if p != env.task.target_pad][0]
    env.reset(seed=2)
    x, y, _ = env.task.pad_position(other)
    env.place_cube(env.task.target_cube, x, y, 0.0)
    env.data.qpos[env._cube_qpos_adr[env.task.target_cube] + 2] += env.task.pad_top
    env.step_to(env.joint_positions(), 0.5)
    assert not env.success()


def test_expert_chunks_carry_the_gripper():
    env = make_env(seed=5)
    expert = PickPlaceExpert(env)
    chunk = expert.chunk(env.joint_positions())
    assert chunk.shape == (expert.config.horizon, 8) and np.all(np.isfinite(chunk))
    assert set(np.unique(chunk[:, -1])) <= {GRIPPER_OPEN, GRIPPER_CLOSED}
    assert np.all(chunk[:, -1] == GRIPPER_OPEN)               # far from the cube: open


@pytest.mark.parametrize('seed', [100000, 100001, 100002, 100003])
def test_expert_succeeds(seed):
    env = make_env(seed=seed)
    expert = PickPlaceExpert(env)
    assert run_expert(env, expert, env.success, max_steps=300), \
        f'{env.instruction}: cube {env.cube_position(env.task.target_cube)} goal {env.goal_position()}'
    assert env.elapsed_s < 12.0


def test_touch_task_hides_pads_and_holds_the_fingers():
    env = ArmEnv(SimConfig(), seed=0, render=False)
    assert env.task.name == 'touch' and len(env.joint_positions()) == 7
    assert all(env.model.body_pos[env.pad_body[p]][2] < -0.1 for p in PAD_COLOURS)
    env.step_to(env.joint_positions(), 0.5)
    assert env.gripper_opening() == pytest.approx(SimConfig().gripper_hold_opening, abs=1e-3)


def test_scene_jitter_changes_pixels_not_layout():
    plain, jittered = make_env(seed=9, render=True), make_env(seed=9, render=True, light_jitter=0.3,
                                                              colour_jitter=0.08, camera_jitter_m=0.02)
    assert plain.instruction == jittered.instruction
    for c in CUBE_COLOURS:
        np.testing.assert_allclose(plain.cube_position(c), jittered.cube_position(c))
    a, b = plain.render().astype(int), jittered.render().astype(int)
    assert np.abs(a - b).mean() > 1.0
    again = make_env(seed=9, render=True, light_jitter=0.3, colour_jitter=0.08, camera_jitter_m=0.02)
    np.testing.assert_array_equal(again.render(), jittered.render())      # seeded by the episode
    jittered.config.light_jitter = jittered.config.colour_jitter = jittered.config.camera_jitter_m = 0.0
    jittered.reset(seed=9)
    np.testing.assert_array_equal(jittered.render(), plain.render())     # off again = the MJCF's scene


def test_task_targets_follow_the_named_cube_and_the_goal():
    """Ground truth for the training's auxiliary loss: the named cube's centre (it moves when carried)
    and the goal (cube resting on the named pad)."""
    from vla_ros.sim.demos import collect_episode
    from vla_ros.sim.pick_place_expert import PickPlaceExpert

    env = ArmEnv(task_config(SimConfig, 'sim', 'pick_place'), seed=0)
    ep = collect_episode(env, PickPlaceExpert(env), seed=5, hold_steps=0)
    assert ep.targets.shape == (len(ep.proprio), 6) and ep.targets.dtype == np.float32
    start, end = ep.targets[0], ep.targets[-1]
    pad = env.task.pad_position()
    np.testing.assert_allclose(start[3:5], pad[:2], atol=1e-6)              # the goal sits on the named pad
    np.testing.assert_allclose(end[:3], env.cube_position(env.target_cube), atol=1e-3)  # one step earlier
    assert ep.success and np.linalg.norm(end[:3] - end[3:]) < env.config.place_tolerance_m
    assert np.linalg.norm(start[:3] - end[:3]) > 0.05                       # the cube was carried
