"""Kinematic rollouts of the sim arm for the scripted experts (never touching the live sim state)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import mujoco
import numpy as np


@dataclass
class ChunkIKConfig:
    """What every scripted expert shares: the chunk grid it plans on and the IK that rolls the arm along it."""
    action_dt: float = 0.05          # seconds between chunk steps (ActionConfig.action_dt)
    horizon: int = 16                # steps per chunk (ActionConfig.horizon)
    max_joint_speed: float = 1.2     # per-joint speed limit (rad/s), below the safety filter's 1.5
    damping: float = 0.05            # DLS damping (lambda)
    orientation_weight: float = 0.5  # weight of the orientation error relative to position
    posture_gain: float = 0.1        # null-space pull towards the home posture
    ik_iterations: int = 2           # IK refinements per chunk step
    limit_aware: bool = False        # lock joints at their limits in the IK step (ArmKinematics.dls_step;
                                     # the touch expert's, SimArm.ik_settings)


class ArmKinematics:
    """Forward kinematics of a point fixed to the ee site and damped-least-squares IK steps over a subset
    of joints.

    `qpos_adr` / `dof_adr` pick the joints the expert moves (ArmEnv._qpos_adr / _qvel_adr, or a slice);
    `point_offset` (site frame, m) moves the controlled point off the site (the SO-101's grasp point between
    its jaws: ArmEnv.grasp_offset); every call works on a private MjData, so the live simulation is never
    disturbed.
    """

    def __init__(self, env, qpos_adr: np.ndarray, dof_adr: np.ndarray, point_offset: Optional[np.ndarray] = None):
        self.model = env.model
        self.site = env.ee_site_id
        self._body = int(self.model.site_bodyid[self.site])
        self._offset = None if point_offset is None or not np.any(point_offset) else np.asarray(point_offset, float)
        self._point = np.zeros(3)
        self._scratch = mujoco.MjData(self.model)
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))
        self._qadr = qpos_adr
        self._dofs = dof_adr

    def forward(self, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(point position [3], ee rotation matrix [3, 3]) at joint positions `q`."""
        self._scratch.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, self._scratch)
        mujoco.mj_comPos(self.model, self._scratch)
        rot = self._scratch.site_xmat[self.site].reshape(3, 3).copy()
        self._point = self._scratch.site_xpos[self.site].copy()
        if self._offset is not None:
            self._point += rot @ self._offset
        return self._point.copy(), rot

    def dls_step(self, q: np.ndarray, pos_err: np.ndarray, rot_err: np.ndarray, orientation_weight: float,
                 damping: float, posture_gain: float, home: np.ndarray,
                 limits: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
        """Joint step towards the errors (at `q`, which `forward` must have been called with last),
        plus a null-space pull of `posture_gain` towards `home`.

        With `limits` (lower, upper), a joint at a limit that the step would push further is locked
        and the step solved again with the other joints (a short arm's wrist at its stop otherwise
        stalls the whole solution: its share of the step is clipped away every time)."""
        if self._offset is None:
            mujoco.mj_jacSite(self.model, self._scratch, self._jacp, self._jacr, self.site)
        else:
            mujoco.mj_jac(self.model, self._scratch, self._jacp, self._jacr, self._point, self._body)
        jac = np.vstack([self._jacp[:, self._dofs], orientation_weight * self._jacr[:, self._dofs]])
        err = np.concatenate([pos_err, orientation_weight * rot_err])
        posture = posture_gain * (home - q)
        step = self._solve(jac, err, damping, posture)
        if limits is not None:
            lower, upper = limits
            locked = np.zeros(len(q), dtype=bool)
            while True:                       # until no free joint at a stop is pushed past it
                pushing = ((q <= lower + 1e-6) & (step < 0)) | ((q >= upper - 1e-6) & (step > 0))
                if not (pushing & ~locked).any():
                    break
                locked |= pushing
                step = self._solve(jac * ~locked, err, damping, posture * ~locked) * ~locked
        return step

    @staticmethod
    def _solve(jac: np.ndarray, err: np.ndarray, damping: float, posture: np.ndarray) -> np.ndarray:
        jjt = jac @ jac.T + (damping ** 2) * np.eye(jac.shape[0])
        j_pinv = jac.T @ np.linalg.solve(jjt, np.eye(jac.shape[0]))
        null = np.eye(jac.shape[1]) - j_pinv @ jac
        return j_pinv @ err + null @ posture
