"""Tabletop "touch the <colour> cube" task on a MuJoCo Franka Panda (no ROS).

The env owns physics, rendering and the success check; ROS wrappers, the scripted expert and
the training/evaluation scripts all drive it through the same small API.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import vla_ros.sim  # noqa: F401  (selects a headless GL backend before mujoco is imported)
import mujoco
import numpy as np

from vla_ros.config.sim import SimConfig

ASSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'panda_tabletop.xml')
CUBE_COLOURS = ('red', 'green', 'blue')
# The usual Panda "ready" posture: hand above the table, pointing down.
HOME_Q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
INSTRUCTION_TEMPLATES = (
    'touch the {colour} cube',
    'touch the {colour} block',
    'reach out and touch the {colour} cube',
    'put your gripper on the {colour} cube',
)
EE_SITE = 'ee_site'


class ArmEnv:
    """Position-controlled Panda with three seeded cubes; success = fingertip held on the target's top."""

    def __init__(self, config: Optional[SimConfig] = None, seed: Optional[int] = None, render: bool = True):
        self.config = config or SimConfig()
        self.model = mujoco.MjModel.from_xml_path(ASSET_PATH)
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
        self._actuator_ids = np.array([mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, f'act_{n}')
                                       for n in self.joint_names])
        self.ee_site_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)
        self._cube_qpos_adr = {c: self.model.jnt_qposadr[mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_JOINT, f'cube_{c}_joint')] for c in CUBE_COLOURS}
        self._cube_body = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, f'cube_{c}')
                           for c in CUBE_COLOURS}
        geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, 'cube_red_geom')
        self.cube_half_size = float(self.model.geom_size[geom][2])
        self._want_render = render
        self._renderer: Optional[mujoco.Renderer] = None
        self._base_seed = self.config.seed if seed is None else int(seed)
        self.episode = -1
        self.seed: Optional[int] = None
        self.instruction = ''
        self.target_cube = ''
        self._success = False
        self._hold_time = 0.0
        self._start_time = 0.0
        self.reset(seed=self._base_seed)

    # ---------------------------------------------------------------- episode control
    def reset(self, seed: Optional[int] = None) -> Dict[str, object]:
        """Start a new episode; without a seed, episode i of this env uses base seed + i."""
        self.episode += 1
        self.seed = int(seed) if seed is not None else self._base_seed + self.episode
        rng = np.random.default_rng(self.seed)
        mujoco.mj_resetData(self.model, self.data)
        noise = rng.uniform(-1.0, 1.0, size=len(HOME_Q)) * self.config.initial_joint_noise
        q0 = self.clip_to_limits(HOME_Q + noise)
        self.data.qpos[self._qpos_adr] = q0
        for colour, (x, y) in zip(CUBE_COLOURS, self._sample_cube_xy(rng)):
            adr = self._cube_qpos_adr[colour]
            self.data.qpos[adr:adr + 3] = (x, y, self.cube_half_size)
            yaw = rng.uniform(-np.pi / 4, np.pi / 4)
            self.data.qpos[adr + 3:adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        self.data.ctrl[self._actuator_ids] = q0
        mujoco.mj_forward(self.model, self.data)
        self.target_cube = CUBE_COLOURS[int(rng.integers(len(CUBE_COLOURS)))]
        template = INSTRUCTION_TEMPLATES[int(rng.integers(len(INSTRUCTION_TEMPLATES)))]
        self.instruction = template.format(colour=self.target_cube)
        self._success = False
        self._hold_time = 0.0
        self._start_time = float(self.data.time)
        return self.observation()

    def _sample_cube_xy(self, rng: np.random.Generator) -> List[np.ndarray]:
        (x0, x1), (y0, y1) = self.config.cube_x_range, self.config.cube_y_range
        placed: List[np.ndarray] = []
        for _ in range(1000):
            if len(placed) == len(CUBE_COLOURS):
                break
            xy = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
            if all(np.linalg.norm(xy - p) >= self.config.cube_min_separation_m for p in placed):
                placed.append(xy)
        if len(placed) < len(CUBE_COLOURS):
            raise ValueError('cube ranges too small for sim.cube_min_separation_m')
        return placed

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
            if self.distance_to_goal() <= self.config.success_threshold_m:
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

    def cube_position(self, colour: str) -> np.ndarray:
        return self.data.xpos[self._cube_body[colour]].copy()

    def goal_position(self) -> np.ndarray:
        """Top centre of the target cube."""
        return self.cube_position(self.target_cube) + np.array([0.0, 0.0, self.cube_half_size])

    def distance_to_goal(self) -> float:
        return float(np.linalg.norm(self.ee_position() - self.goal_position()))

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
