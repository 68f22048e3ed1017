"""Tabletop tasks on a MuJoCo arm with a gripper (no ROS): the Franka Panda or the SO-101 (`sim.arm`,
vla_ros.sim.arm_models).

The env owns physics, rendering and the success timing; the task (`sim.task`, vla_ros.sim.tasks:
touch or pick_place) owns layout, instruction and success test. ROS wrappers, the scripted experts
and the training/evaluation scripts all drive it through the same small API.

Joints are addressed by name (`sim.joint_names`); the gripper is one more position-controlled
joint (Panda: `finger_joint1`, per-finger opening in metres, 0 = closed, 0.04 = open; SO-101:
`gripper`, the jaw angle in rad; REP 103). Without it in joint_names the gripper is held at
`sim.gripper_hold_opening`.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import vla_ros.sim  # noqa: F401  (selects a headless GL backend before mujoco is imported)
import mujoco
import numpy as np

from vla_ros.config.sim import SimConfig

from vla_ros.sim.arm_models import EE_SITE, PANDA, build_model
from vla_ros.sim.tasks import CUBE_COLOURS, PAD_COLOURS, TOUCH_TEMPLATES, make_task  # noqa: F401

# The Panda's (sim.arm=panda, the default); an env's own arm is `env.arm`.
HOME_Q = np.array(PANDA.home_q)
ARM_JOINTS = PANDA.arm_joints
GRIPPER_JOINT = PANDA.gripper_joint
GRIPPER_OPEN = PANDA.gripper_open
INSTRUCTION_TEMPLATES = TOUCH_TEMPLATES


class ArmEnv:
    """Position-controlled arm + gripper, three seeded cubes, two pads; success = the task's test held
    for `success_hold_s`."""

    def __init__(self, config: Optional[SimConfig] = None, seed: Optional[int] = None, render: bool = True):
        self.config = config or SimConfig()
        self.model, self.arm = build_model(self.config.arm)
        self.model.opt.timestep = 1.0 / self.config.physics_rate_hz
        self.data = mujoco.MjData(self.model)
        self.joint_names: List[str] = list(self.config.joint_names)
        joint_ids = [mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in self.joint_names]
        if min(joint_ids) < 0:
            raise ValueError(f'unknown joint in {self.joint_names}')
        self._qpos_adr = np.array([self.model.jnt_qposadr[j] for j in joint_ids])
        self._qvel_adr = np.array([self.model.jnt_dofadr[j] for j in joint_ids])
        self.joint_lower = self.model.jnt_range[joint_ids, 0].copy()
        self.joint_upper = self.model.jnt_range[joint_ids, 1].copy()
        arm = self.arm
        self._actuator_ids = np.array([mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR,
                                                         arm.actuator_prefix + n) for n in self.joint_names])
        self.ee_site_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)
        self._cube_qpos_adr = {c: self.model.jnt_qposadr[mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_JOINT, f'cube_{c}_joint')] for c in CUBE_COLOURS}
        self._cube_body = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, f'cube_{c}')
                           for c in CUBE_COLOURS}
        self._cube_dof = {c: self.model.jnt_dofadr[mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_JOINT, f'cube_{c}_joint')] for c in CUBE_COLOURS}
        self.cube_geom = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, f'cube_{c}_geom')
                          for c in CUBE_COLOURS}
        self.pad_body = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, f'pad_{c}') for c in PAD_COLOURS}
        self.finger_geom = {side: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)
                            for side, name in zip(('left', 'right'), arm.finger_geoms)}
        if self.config.cube_half_size_m > 0:   # collision and rendering read geom_size
            for geom in self.cube_geom.values():
                self.model.geom_size[geom] = self.config.cube_half_size_m
        if self.config.pad_radius_m > 0:
            for colour in PAD_COLOURS:
                self.model.geom_size[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM,
                                                       f'pad_{colour}_geom')][0] = self.config.pad_radius_m
        self.cube_half_size = float(self.model.geom_size[self.cube_geom['red']][2])
        if self.config.task == 'pick_place':    # the jaws' contact geoms grasp (the SO-101's are inert until now)
            for geom in self.finger_geom.values():
                self.model.geom_contype[geom] |= 1
                self.model.geom_conaffinity[geom] |= 1
        self._gripper_qpos = [self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, n)]
                              for n in arm.gripper_qpos_joints]
        self._gripper_act = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR,
                                              arm.actuator_prefix + arm.gripper_joint)
        self.gripper_joint = arm.gripper_joint
        self.grasp_offset, self.gripper_grasp_value = self._grasp_geometry()
        self.has_gripper = arm.gripper_joint in self.joint_names
        self.arm_index = np.array([i for i, n in enumerate(self.joint_names) if n in arm.arm_joints])
        home = dict(zip(arm.arm_joints, arm.home_q), **{arm.gripper_joint: arm.gripper_open})
        self.home_q = np.array([home.get(n, 0.0) for n in self.joint_names])
        from vla_ros.sim.jitter import SceneJitter
        self._jitter = SceneJitter(self.model, self.config)
        self.task = make_task(self)
        self._want_render = render
        self._renderer: Optional[mujoco.Renderer] = None
        self._base_seed = self.config.seed if seed is None else int(seed)
        self.episode = -1
        self.seed: Optional[int] = None
        self.instruction = ''
        self._success = False
        self._hold_time = 0.0
        self._start_time = 0.0
        self.reset(seed=self._base_seed)

    def _grasp_geometry(self):
        """(grasp point in the ee_site frame [3], gripper value at which the jaws touch a cube's two faces).

        Panda: the ee_site is between the fingertips and the value is the per-finger opening, i.e. the cube's
        half size. A fixed-jaw gripper (SO-101): the jaw angle is swept on a scratch copy until the pads' inner
        faces are one cube edge apart, and the grasp point is midway between them."""
        if not self.arm.fixed_jaw:
            return np.zeros(3), self.cube_half_size
        m = self.model
        scratch = mujoco.MjData(m)
        fixed, moving = (self.finger_geom['left'], self.finger_geom['right'])
        inset = float(m.geom_size[fixed][0] + m.geom_size[moving][0])   # pad half thicknesses (box x)
        lo, hi = self.arm.gripper_closed, self.arm.gripper_open
        for _ in range(40):                    # bisection: the gap grows with the jaw angle
            mid = 0.5 * (lo + hi)
            scratch.qpos[self._gripper_qpos] = mid
            mujoco.mj_kinematics(m, scratch)
            gap = float(np.linalg.norm(scratch.geom_xpos[moving] - scratch.geom_xpos[fixed])) - inset
            lo, hi = (mid, hi) if gap < 2 * self.cube_half_size else (lo, mid)
        centre = 0.5 * (scratch.geom_xpos[moving] + scratch.geom_xpos[fixed])
        rot = scratch.site_xmat[self.ee_site_id].reshape(3, 3)
        return rot.T @ (centre - scratch.site_xpos[self.ee_site_id]), 0.5 * (lo + hi)

    # ---------------------------------------------------------------- episode control
    def reset(self, seed: Optional[int] = None) -> Dict[str, object]:
        """Start a new episode; without a seed, episode i of this env uses base seed + i."""
        self.episode += 1
        self.seed = int(seed) if seed is not None else self._base_seed + self.episode
        rng = np.random.default_rng(self.seed)
        mujoco.mj_resetData(self.model, self.data)
        noise = rng.uniform(-1.0, 1.0, size=len(self.arm.home_q)) * self.config.initial_joint_noise
        q0 = self.home_q.copy()
        q0[self.arm_index] += noise[:len(self.arm_index)]
        q0 = self.clip_to_limits(q0)
        self.data.qpos[self._qpos_adr] = q0
        if not self.has_gripper:              # fingers held where the task wants them
            self.data.qpos[self._gripper_qpos] = self.config.gripper_hold_opening
            self.data.ctrl[self._gripper_act] = self.config.gripper_hold_opening
        else:
            self.data.qpos[self._gripper_qpos] = q0[list(self.joint_names).index(self.gripper_joint)]
        self.instruction = self.task.reset(rng)
        self._jitter.apply(self.seed)
        self.data.ctrl[self._actuator_ids] = q0
        mujoco.mj_forward(self.model, self.data)
        self._success = False
        self._hold_time = 0.0
        self._start_time = float(self.data.time)
        return self.observation()

    def place_cube(self, colour: str, x: float, y: float, yaw: float) -> None:
        """Put a cube at rest on the table at (x, y) turned by yaw (rad) about z."""
        adr = self._cube_qpos_adr[colour]
        self.data.qpos[adr:adr + 3] = (x, y, self.cube_half_size)
        self.data.qpos[adr + 3:adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))

    @property
    def target_cube(self) -> str:
        return self.task.target_cube

    def observation(self) -> Dict[str, object]:
        obs: Dict[str, object] = {'joint_positions': self.joint_positions(),
                                  'joint_velocities': self.joint_velocities(),
                                  'instruction': self.instruction}
        if self._want_render:
            obs['image'] = self.render()
        return obs

    # ---------------------------------------------------------------- control
    def clip_to_limits(self, q) -> np.ndarray:
        return np.clip(np.asarray(q, dtype=np.float64), self.joint_lower, self.joint_upper)

    def set_target(self, q_target) -> np.ndarray:
        """Set the position-servo setpoints; non-finite or wrong-length targets are refused."""
        q = np.asarray(q_target, dtype=np.float64).reshape(-1)
        if q.shape != (len(self.joint_names),) or not np.all(np.isfinite(q)):
            raise ValueError(f'joint target must be {len(self.joint_names)} finite values, got {q_target!r}')
        q = self.clip_to_limits(q)
        self.data.ctrl[self._actuator_ids] = q
        return q

    def command_jump(self, q_target) -> float:
        """Largest distance (rad) of an arm joint's target from its position (sim.max_command_jump). The
        gripper is left out: squeezing an object, it is commanded inside it (the SO-101's jaw by ~0.56 rad)."""
        q = np.asarray(q_target, dtype=np.float64).reshape(-1)
        return float(np.max(np.abs(q - self.joint_positions())[self.arm_index]))

    def target(self) -> np.ndarray:
        return self.data.ctrl[self._actuator_ids].copy()

    def restart_clock(self) -> None:
        """Start timing the current episode now (the layout and instruction stay)."""
        self._start_time = float(self.data.time)
        self._hold_time = 0.0
        self._success = False

    def step_physics(self, n_steps: int = 1) -> None:
        """Advance physics, tracking how long the fingertip has stayed on the target."""
        dt = self.model.opt.timestep
        for _ in range(int(n_steps)):
            mujoco.mj_step(self.model, self.data)
            if self.task.satisfied():
                self._hold_time += dt
                if self._hold_time >= self.config.success_hold_s - 1e-9:
                    self._success = True
            else:
                self._hold_time = 0.0

    def step_to(self, q_target, duration_s: float) -> Dict[str, object]:
        """Command `q_target` (clipped to the joint limits) and simulate `duration_s` seconds."""
        self.set_target(q_target)
        self.step_physics(max(1, int(round(duration_s / self.model.opt.timestep))))
        return {'joint_positions': self.joint_positions(), 'success': self._success}

    # ---------------------------------------------------------------- state
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._qvel_adr].copy()

    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self.ee_site_id].copy()

    def ee_rotation(self) -> np.ndarray:
        """Hand frame in the world [3, 3] (columns: x, y = finger motion, z = approach)."""
        return self.data.site_xmat[self.ee_site_id].reshape(3, 3).copy()

    def gripper_opening(self) -> float:
        """Measured gripper joint (Panda: per-finger opening, m; SO-101: jaw angle, rad)."""
        return float(self.data.qpos[self._gripper_qpos[0]])

    def cube_position(self, colour: str) -> np.ndarray:
        return self.data.xpos[self._cube_body[colour]].copy()

    def cube_yaw(self, colour: str) -> float:
        rot = self.data.xmat[self._cube_body[colour]].reshape(3, 3)
        return float(np.arctan2(rot[1, 0], rot[0, 0]))

    def cube_velocity(self, colour: str) -> np.ndarray:
        adr = self._cube_dof[colour]
        return self.data.qvel[adr:adr + 3].copy()

    def goal_position(self) -> np.ndarray:
        """Touch: the target cube's top centre; pick_place: the cube centre resting on the target pad."""
        return self.task.goal_position()

    def task_targets(self) -> np.ndarray:
        """[TASK_TARGETS_DIM = 6] float32 (vla_ros.config.sim): the named cube's centre and the goal
        position (m, base frame). Ground truth the policy must find in the image: training uses it as an
        auxiliary target, never at run time."""
        return np.concatenate([self.cube_position(self.target_cube), self.goal_position()]).astype(np.float32)

    def distance_to_goal(self) -> float:
        """Touch: fingertip to goal; pick_place: target cube centre to goal (m)."""
        return self.task.distance_to_goal()

    def success(self) -> bool:
        return self._success

    @property
    def elapsed_s(self) -> float:
        return float(self.data.time) - self._start_time

    def timed_out(self) -> bool:
        return self.elapsed_s >= self.config.episode_timeout_s

    def done(self) -> bool:
        return self._success or self.timed_out()

    # ---------------------------------------------------------------- rendering
    def render(self) -> np.ndarray:
        """RGB uint8 [H, W, 3] from the fixed camera (offscreen; the GL context lives in this thread)."""
        if self._renderer is None:
            h, w = self.config.image_height, self.config.image_width
            self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, w)
            self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, h)
            self._renderer = mujoco.Renderer(self.model, height=h, width=w)
        self._renderer.update_scene(self.data, camera=self.config.camera_name)
        return np.ascontiguousarray(self._renderer.render(), dtype=np.uint8)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
