"""Scripted expert for the touch task: Cartesian funnel + damped-least-squares IK.

The expert is a feedback policy: from any measured joint state it rolls the arm's kinematics
forward `horizon` steps of `action_dt` and returns the joint targets, i.e. exactly the action
chunk format the flow-matching head is trained to produce (step k is the target to apply
k * action_dt after the request). Being state-based it also labels perturbed states, which is
what the noise-injection (DART/DAgger-style) data collection relies on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vla_ros.sim.arm_env import ArmEnv
from vla_ros.sim.kinematics import ArmKinematics, ChunkIKConfig

DOWN = np.array([0.0, 0.0, -1.0])


@dataclass
class ExpertConfig(ChunkIKConfig):   # + chunk grid and IK settings (orientation = "point down")
    max_speed: float = 0.35          # fingertip Cartesian speed limit (m/s)
    hover_height: float = 0.10       # approach height above the cube top (m)
    touch_height: float = 0.008      # final fingertip height above the cube top (m)
    funnel_slope: float = 2.0        # allowed height above touch per metre of horizontal error


class TouchExpert:
    """Moves the fingertip above the target cube, then straight down onto its top face."""

    def __init__(self, env: ArmEnv, config: Optional[ExpertConfig] = None):
        self.env = env
        # the arm's own IK settings (SimArm.ik_settings) on top: they belong to its kinematics
        self.config = dataclasses.replace(config or ExpertConfig(), **dict(env.arm.ik_settings))
        self.model = env.model
        self._kin = ArmKinematics(env, env._qpos_adr, env._qvel_adr)
        self._home = env.home_q.copy()     # the null-space posture (the arm's home)
        margin = 0.02
        self._lo = env.joint_lower + margin
        self._hi = env.joint_upper - margin

    def subgoal(self, ee: np.ndarray, goal_top: np.ndarray) -> np.ndarray:
        """Funnel: the further the fingertip is sideways from the cube, the higher it must stay."""
        c = self.config
        horizontal = float(np.linalg.norm(ee[:2] - goal_top[:2]))
        height = c.touch_height + min(c.hover_height, c.funnel_slope * max(0.0, horizontal - 0.005))
        return np.array([goal_top[0], goal_top[1], goal_top[2] + height])

    def _forward(self, q: np.ndarray):
        pos, rot = self._kin.forward(q)
        return pos, rot[:, 2].copy()

    def _ik_step(self, q: np.ndarray, p_des: np.ndarray) -> np.ndarray:
        c = self.config
        pos, z_axis = self._forward(q)
        return self._kin.dls_step(q, p_des - pos, np.cross(z_axis, DOWN), c.orientation_weight, c.damping,
                                  c.posture_gain, self._home, (self._lo, self._hi) if c.limit_aware else None)

    def chunk(self, q_start, goal_top: Optional[np.ndarray] = None) -> np.ndarray:
        """Joint targets [horizon, joints] for the next horizon * action_dt seconds from `q_start`."""
        c = self.config
        goal_top = self.env.goal_position() if goal_top is None else np.asarray(goal_top, dtype=np.float64)
        q = np.clip(np.asarray(q_start, dtype=np.float64), self._lo, self._hi)
        max_dq = c.max_joint_speed * c.action_dt
        out = np.empty((c.horizon, len(q)))
        for k in range(c.horizon):
            ee, _ = self._forward(q)
            target = self.subgoal(ee, goal_top)
            delta = target - ee
            dist = float(np.linalg.norm(delta))
            step = c.max_speed * c.action_dt
            p_des = target if dist <= step else ee + delta * (step / dist)
            q_next = q.copy()
            for _ in range(c.ik_iterations):
                q_next = q_next + self._ik_step(q_next, p_des)
            q_next = q + np.clip(q_next - q, -max_dq, max_dq)
            q = np.clip(q_next, self._lo, self._hi)
            out[k] = q
        return out
