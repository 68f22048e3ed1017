"""Pick-and-place on the SO-101 (task so101_pick_place): its jaw grasps (pads that collide in this task only,
the jaw angle that closes on a cube read off the model, the grasp point midway between the jaws), the
preset's layout within the arm's reach, the scripted expert solving held-out layouts, and the kinematics
of a point off the ee site."""
import numpy as np
import pytest

import vla_ros.sim  # noqa: F401  (GL backend before mujoco is imported)

mujoco = pytest.importorskip('mujoco')

from vla_ros.config import ActionConfig, SimConfig  # noqa: E402
from vla_ros.config.tasks import task_config  # noqa: E402
from vla_ros.sim.arm_env import ArmEnv  # noqa: E402

TASK = 'so101_pick_place'


@pytest.fixture(scope='module')
def env():
    e = ArmEnv(task_config(SimConfig, 'sim', TASK), render=False)
    yield e
    e.close()


def _pad_gap(env, angle):
    """Inner gap (m) between the jaw pads at jaw angle `angle`, on a scratch copy."""
    m = env.model
    data = mujoco.MjData(m)
    data.qpos[m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, 'gripper')]] = angle
    mujoco.mj_kinematics(m, data)
    fixed, moving = env.finger_geom['left'], env.finger_geom['right']
    centres = data.geom_xpos[moving] - data.geom_xpos[fixed]
    return float(np.linalg.norm(centres) - m.geom_size[fixed][0] - m.geom_size[moving][0]), data


def test_preset_scene_and_grasp_geometry(env):
    cfg = env.config
    assert env.arm.name == 'so101' and env.joint_names[-1] == 'gripper' and env.has_gripper
    assert env.cube_half_size == pytest.approx(cfg.cube_half_size_m)
    assert env.task.pad_radius == pytest.approx(cfg.pad_radius_m)
    # the jaw angle the expert closes towards the cube: the pads' inner faces one cube edge apart
    assert env.arm.gripper_closed < env.gripper_grasp_value < env.arm.gripper_open
    gap, data = _pad_gap(env, env.gripper_grasp_value)
    assert gap == pytest.approx(2 * env.cube_half_size, abs=2e-4)
    assert _pad_gap(env, env.arm.gripper_open)[0] > 2 * env.cube_half_size + 0.02     # room to descend
    # the grasp point (ee_site frame) is midway between the pads at that angle
    site = env.ee_site_id
    point = data.site_xpos[site] + data.site_xmat[site].reshape(3, 3) @ env.grasp_offset
    mid = 0.5 * (data.geom_xpos[env.finger_geom['left']] + data.geom_xpos[env.finger_geom['right']])
    np.testing.assert_allclose(point, mid, atol=1e-6)
    assert abs(env.grasp_offset[1]) > 0.01                     # off the fixed jaw's tip, along the closing line


def test_jaw_pads_collide_in_pick_place_only(env):
    touch = ArmEnv(task_config(SimConfig, 'sim', 'so101_touch'), render=False)
    try:
        cube = env.cube_geom['red']
        for e, grasping in ((env, True), (touch, False)):
            for geom in e.finger_geom.values():
                hits = bool(e.model.geom_contype[geom] & e.model.geom_conaffinity[cube]) or \
                    bool(e.model.geom_contype[cube] & e.model.geom_conaffinity[geom])
                assert hits == grasping
        assert touch.cube_half_size == pytest.approx(0.025)     # the touch task keeps the scene's cubes
    finally:
        touch.close()


def test_layouts_stay_within_reach(env):
    lo, hi = env.config.reach_range_m
    for seed in range(300000, 300030):
        env.reset(seed=seed)
        for colour in ('red', 'green', 'blue'):
            assert lo <= np.linalg.norm(env.cube_position(colour)[:2]) <= hi
        for colour in ('yellow', 'purple'):
            assert lo <= np.linalg.norm(env.task.pad_position(colour)[:2]) <= hi
        assert env.task.target_cube in env.instruction and env.task.target_pad in env.instruction


def test_point_jacobian_matches_finite_differences(env):
    from vla_ros.sim.kinematics import ArmKinematics

    arm = env.arm_index
    kin = ArmKinematics(env, env._qpos_adr[arm], env._qvel_adr[arm], env.grasp_offset)
    q = np.array([0.3, -0.4, 0.5, 1.2, 0.2])
    p0, _ = kin.forward(q)
    step = kin.dls_step(q, np.array([0.01, 0.0, 0.0]), np.zeros(3), 0.0, 1e-6, 0.0, q)
    p1, _ = kin.forward(q + 0.1 * step)
    # a small DLS step for +x moves the grasp point (not the site) mostly along +x
    moved = p1 - p0
    assert moved[0] > 0 and abs(moved[0]) > 5 * np.abs(moved[1:]).max()


def test_scripted_expert_picks_and_places(env):
    from vla_ros.training.rollouts import make_expert

    expert = make_expert(env, task_config(ActionConfig, 'action', TASK))
    assert expert.config.fixed_jaw_clearance > 0 and expert.config.gripper_speed > 0.5   # the arm's own settings
    lifted = 0
    for seed in (100000, 100001, 100002):
        env.reset(seed=seed)
        steps, grasp_seen = 0, False
        while not env.done() and steps < 300:
            chunk = expert.chunk(env.joint_positions())
            assert chunk.shape == (expert.config.horizon, 6)
            env.step_to(chunk[0], expert.config.action_dt)
            grasp_seen |= env.cube_position(env.task.target_cube)[2] > env.cube_half_size + 0.02
            steps += 1
        assert env.success(), (seed, env.distance_to_goal(), expert.last_phase)
        lifted += grasp_seen
    assert lifted == 3                                          # carried, not pushed


def test_training_colour_targets_follow_the_sim_task():
    """The encoder's colour probe learns the pads too wherever the preset's sim task is pick_place."""
    from vla_ros.training.policy import task_colours

    assert task_colours('so101_pick_place') == task_colours('pick_place') == \
        ('red', 'green', 'blue', 'yellow', 'purple')
    assert task_colours('so101_touch') == task_colours('touch') == ('red', 'green', 'blue')


def test_command_jump_leaves_the_squeezing_gripper_out(env):
    """The sim (like a real driver) refuses arm targets far from the arm, but a jaw closed on a cube is
    commanded ~0.56 rad inside it: that is a grasp, not a discontinuity (sim.max_command_jump)."""
    env.reset(seed=100000)
    q = env.joint_positions()
    squeeze = q.copy()
    squeeze[-1] = env.arm.gripper_closed - 0.4                  # far past the measured jaw
    assert env.command_jump(squeeze) == pytest.approx(0.0, abs=1e-12)
    jump = q.copy()
    jump[1] += 0.5
    assert env.command_jump(jump) == pytest.approx(0.5)
    assert env.command_jump(jump) > env.config.max_command_jump
