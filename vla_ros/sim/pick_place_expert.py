"""Scripted expert for pick-and-place: IK approach, descend, close, lift, carry, lower, open, retreat.

Like `TouchExpert` it is a feedback policy of the current state, so it can label any state a
learned policy drifts into (DART noise, DAgger). The phase is read from the sim state (finger
contacts with the target cube, grip firmness, cube on the pad), then the arm kinematics, a virtual
gripper and, while grasped, the carried cube are rolled forward `horizon` steps of `action_dt`,
switching phase inside the chunk where the rollout reaches the next one. Each chunk row is
[arm joint targets, gripper target]; the gripper target is open or closed (the servo squeezes the cube),
ramped by the safety filter online. The defaults are the Panda hand's (per-finger opening, m: GRIPPER_OPEN,
GRIPPER_CLOSED); another arm's gripper units and reach come from its SimArm.pick_place_settings, and a
fixed-jaw gripper (SO-101) is steered by the point midway between its jaws (ArmEnv.grasp_offset).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vla_ros.sim.arm_env import ArmEnv
from vla_ros.sim.arm_models import PANDA
from vla_ros.sim.expert import DOWN
from vla_ros.sim.kinematics import ArmKinematics, ChunkIKConfig

GRIPPER_CLOSED = PANDA.gripper_closed      # the Panda hand's (m); GRIPPER_OPEN: vla_ros.sim.arm_env
PHASES = ('reach', 'close', 'carry', 'release', 'retreat')


@dataclass
class PickPlaceExpertConfig(ChunkIKConfig):   # + chunk grid and IK settings
    max_speed: float = 0.3           # fingertip Cartesian speed limit (m/s)
    gripper_speed: float = 0.1       # finger speed assumed by the rollout (m/s), = the gripper safety limit
    grasp_height: float = 0.015      # fingertip (ee site) height above the table when closing (m)
    hover_height: float = 0.09       # approach / carry height above the grasp / place pose (m)
    funnel_slope: float = 2.0        # allowed height above the grasp pose per metre of horizontal error
    carry_funnel_slope: float = 2.0  # the same above the place pose, carrying the cube
    lift_first_margin: float = 0.02  # below subgoal height by more than this: go straight up first
    pose_tolerance: float = 0.006    # ee within this of the grasp pose (m) -> close
    yaw_tolerance: float = 0.08      # hand yaw within this of the cube's faces (rad) -> close
    firm_squeeze: float = 0.006      # grip counts firm once the command is this far inside the fingers (m)
    place_drop: float = 0.002        # lower the cube this far below its resting height (m)
    release_tolerance: float = 0.006 # cube centre within this of its place pose -> open
    retreat_height: float = 0.16     # fingertip height after releasing (m)
    open_tolerance: float = 0.004    # measured gripper within this of open counts as open (gripper units)
    release_margin: float = 0.008    # commanded this far past the grasp value: the cube is let go (units)
    fixed_jaw_clearance: float = 0.0 # fixed-jaw gripper: its jaw descends this far off the cube's face (m),
                                     # the moving jaw then pushes the cube onto it


def _yaw_of(axis: np.ndarray) -> float:
    return float(np.arctan2(axis[1], axis[0]))


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


class PickPlaceExpert:
    def __init__(self, env: ArmEnv, config: Optional[PickPlaceExpertConfig] = None):
        if not env.has_gripper or env.task.name != 'pick_place':
            raise ValueError('PickPlaceExpert needs sim.task=pick_place with the gripper joint in sim.joint_names')
        self.env = env
        # the arm's gripper units and reach (SimArm.pick_place_settings) on top: they belong to the arm
        self.config = dataclasses.replace(config or PickPlaceExpertConfig(), **dict(env.arm.pick_place_settings))
        self.model = env.model
        self._arm = env.arm_index
        self._grip = list(env.joint_names).index(env.gripper_joint)
        self._open = env.arm.gripper_open
        self._closed = env.arm.gripper_closed
        self._kin = ArmKinematics(env, env._qpos_adr[self._arm], env._qvel_adr[self._arm], env.grasp_offset)
        self._home = env.home_q[self._arm]   # the null-space posture
        margin = 0.02
        self._lo = env.joint_lower[self._arm] + margin
        self._hi = env.joint_upper[self._arm] - margin
        self.last_phase = ''

    # ------------------------------------------------------------------ kinematics
    def _forward(self, q: np.ndarray):
        return self._kin.forward(q)

    def _ik_step(self, q: np.ndarray, p_des: np.ndarray, r_des: np.ndarray) -> np.ndarray:
        c = self.config
        pos, rot = self._forward(q)
        rot_err = 0.5 * sum(np.cross(rot[:, i], r_des[:, i]) for i in range(3))
        return self._kin.dls_step(q, p_des - pos, rot_err, c.orientation_weight, c.damping, c.posture_gain,
                                  self._home, (self._lo, self._hi) if c.limit_aware else None)

    @staticmethod
    def _rotation(yaw: float) -> np.ndarray:
        """Hand pointing down with its finger axis (y) at `yaw` in the table plane."""
        y = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        x = np.cross(y, DOWN)
        return np.stack([x, y, DOWN], axis=1)

    def grasp_yaw(self, hand_y_yaw: float) -> float:
        """Of the four finger-axis yaws that close on the target cube's faces, the one nearest the hand's."""
        base = self.env.cube_yaw(self.env.target_cube)
        options = [base + k * np.pi / 2 for k in range(4)]
        return min(options, key=lambda a: abs(_wrap(a - hand_y_yaw)))

    # ------------------------------------------------------------------ phase from the sim state
    def phase(self, q_full: np.ndarray) -> str:
        env, c = self.env, self.config
        task = env.task
        left, right = task.finger_contacts()
        g = float(env.gripper_opening())
        g_cmd = float(env.target()[self._grip])
        # squeezing (the command well inside the jaws, which something stops) with a jaw on the cube: held
        firm = (left or right) and g_cmd <= g - c.firm_squeeze
        cube = env.cube_position(env.target_cube)
        goal = task.goal_position()
        if task.cube_on_pad() and not (left or right):
            return 'retreat'
        if firm:
            near = (np.linalg.norm(cube[:2] - goal[:2]) <= c.release_tolerance
                    and cube[2] <= goal[2] + c.release_tolerance)
            return 'release' if near else 'carry'
        if task.cube_on_pad():
            return 'release'
        if left and right:
            return 'close'
        ee, rot = self._forward(np.asarray(q_full, dtype=np.float64)[self._arm])
        if self._at_grasp_pose(ee, rot, cube, g, closing=g_cmd < self._open - c.open_tolerance):
            return 'close'
        return 'reach'

    def grasp_point(self, cube: np.ndarray, r_des: np.ndarray) -> np.ndarray:
        """Where the grasp point closes: over the cube's centre, less the fixed jaw's clearance along the
        closing line (hand y points from the fixed jaw to the moving one)."""
        c = self.config
        return np.array([cube[0], cube[1], c.grasp_height]) - c.fixed_jaw_clearance * np.array([*r_des[:2, 1], 0.0])

    def _at_grasp_pose(self, ee, rot, cube, g, closing: bool = False) -> bool:
        """Hand at the grasp pose with the gripper open; `closing` (the gripper already commanded shut, the
        jaws on their way in, a moving jaw pushing the cube onto the fixed one): any opening, and the
        fixed jaw's clearance more slack."""
        c = self.config
        yaw = _yaw_of(rot[:, 1])
        grasp = self.grasp_point(cube, self._rotation(self.grasp_yaw(yaw)))
        slack = c.fixed_jaw_clearance if closing else 0.0
        return (np.linalg.norm(ee[:2] - grasp[:2]) <= c.pose_tolerance + slack
                and abs(ee[2] - c.grasp_height) <= c.pose_tolerance
                and abs(_wrap(self.grasp_yaw(yaw) - yaw)) <= c.yaw_tolerance
                and (closing or g >= self._open - c.open_tolerance))

    def _funnel(self, point: np.ndarray, goal: np.ndarray, slope: float) -> np.ndarray:
        """Subgoal for `point` (ee or carried cube) heading to `goal`: high while far sideways (`slope` m up
        per m off), straight up first when too low to travel."""
        c = self.config
        horizontal = float(np.linalg.norm(point[:2] - goal[:2]))
        height = goal[2] + min(c.hover_height, slope * max(0.0, horizontal - 0.004))
        if point[2] < height - c.lift_first_margin and horizontal > 0.02:
            return np.array([point[0], point[1], height])
        return np.array([goal[0], goal[1], height])

    # ------------------------------------------------------------------ chunk
    def chunk(self, q_start, phase: Optional[str] = None) -> np.ndarray:
        """Targets [horizon, len(joint_names)] (arm joints + gripper) for the next horizon * action_dt s."""
        env, c = self.env, self.config
        q_full = np.asarray(q_start, dtype=np.float64).copy()
        phase = phase or self.phase(q_full)
        self.last_phase = phase
        q = np.clip(q_full[self._arm], self._lo, self._hi)
        cube = env.cube_position(env.target_cube)
        goal = env.task.goal_position() - np.array([0.0, 0.0, c.place_drop])
        ee0, rot0 = self._forward(q)
        offset = cube - ee0                                  # carried cube relative to the fingertips
        g_cmd = float(env.target()[self._grip])
        half = env.gripper_grasp_value             # the gripper value that touches the cube's faces
        hand_yaw = _yaw_of(rot0[:, 1])
        yaw = self.grasp_yaw(hand_yaw) if phase in ('reach', 'close') else hand_yaw
        r_des = self._rotation(yaw)
        grasp = self.grasp_point(cube, r_des)
        max_dq = c.max_joint_speed * c.action_dt
        step_len = c.max_speed * c.action_dt
        g_step = c.gripper_speed * c.action_dt
        g_virtual = float(env.gripper_opening())
        out = np.empty((c.horizon, len(q_full)))
        for k in range(c.horizon):
            ee, rot = self._forward(q)
            if phase == 'reach':
                target = self._funnel(ee, grasp, c.funnel_slope)
                if g_virtual < self._open - c.open_tolerance:   # never descend with closed fingers
                    target[2] = max(target[2], grasp[2] + c.hover_height)
                grip = self._open
                if self._at_grasp_pose(ee, rot, cube, g_virtual):
                    phase = 'close'
            elif phase == 'close':
                target, grip = grasp, self._closed
                if g_cmd <= half - c.firm_squeeze:
                    phase = 'carry'
            elif phase == 'carry':
                target = self._funnel(ee + offset, goal, c.carry_funnel_slope) - offset
                grip = self._closed
                if np.linalg.norm(ee + offset - goal) <= c.release_tolerance:
                    phase = 'release'
            elif phase == 'release':
                target, grip = ee, self._open
                if g_cmd >= half + c.release_margin:
                    phase = 'retreat'
            else:  # retreat
                target, grip = np.array([ee[0], ee[1], c.retreat_height]), self._open
            delta = target - ee
            dist = float(np.linalg.norm(delta))
            p_des = target if dist <= step_len else ee + delta * (step_len / dist)
            q_next = q.copy()
            for _ in range(c.ik_iterations):
                q_next = q_next + self._ik_step(q_next, p_des, r_des)
            q = np.clip(q + np.clip(q_next - q, -max_dq, max_dq), self._lo, self._hi)
            g_cmd = float(np.clip(grip, g_cmd - g_step, g_cmd + g_step))
            g_virtual = max(g_cmd, half) if phase in ('close', 'carry') else g_cmd
            row = q_full.copy()
            row[self._arm] = q
            row[self._grip] = grip
            out[k] = row
        return out
