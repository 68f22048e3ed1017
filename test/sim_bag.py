"""Test helper: a bag like the recorder writes from a live sim run (camera, joint states, instruction,
task status, joint commands), made without ROS processes from the MuJoCo arm and its scripted expert."""
import numpy as np

from vla_ros.eval.bag_io import BagWriter
from vla_ros.perception.image_codec import compress

NS = '/vla'
FRAME_DT_NS = 100_000_000     # 10 Hz camera, like recorder.image_max_rate_hz
COMMANDS_PER_FRAME = 5        # joint commands logged between two frames


def record_sim_bag(path, episodes=2, frames_per_episode=8, image_format='raw', seed=0, start_ns=1_000_000_000_000):
    """Returns per-episode lists of (joint positions, commanded target) per frame, for checks."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from vla_ros.sim.arm_env import ArmEnv
    from vla_ros.sim.expert import TouchExpert
    from vla_ros_msgs.msg import TaskStatus

    def stamp(ns):
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    env = ArmEnv(seed=seed)
    expert = TouchExpert(env)
    t = start_ns
    truth = []
    with BagWriter(path) as bag:
        for ep in range(episodes):
            env.reset(seed=seed + ep)
            bag.write(f'{NS}/instruction', String(data=env.instruction), t)
            bag.write(f'{NS}/task/status', TaskStatus(episode=ep, instruction=env.instruction), t)
            rows = []
            for _ in range(frames_per_episode):
                q = env.joint_positions()
                rgb = env.render()
                js = JointState(name=list(env.joint_names), position=[float(v) for v in q])
                js.header.stamp = stamp(t)
                bag.write(f'{NS}/joint_states', js, t)
                if image_format == 'raw':
                    img = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8', step=rgb.shape[1] * 3)
                    img.data = rgb.tobytes()
                    topic = f'{NS}/camera/image_raw'
                else:
                    fmt, payload = compress(rgb, 'rgb8', image_format)
                    img = CompressedImage(format=fmt)
                    img.data = payload
                    topic = f'{NS}/camera/image_raw/compressed'
                img.header.stamp, img.header.frame_id = stamp(t), 'camera'
                bag.write(topic, img, t + 1)
                target = expert.chunk(q)[0]
                for k in range(COMMANDS_PER_FRAME):
                    log = t + 2 + k * FRAME_DT_NS // COMMANDS_PER_FRAME
                    traj = JointTrajectory(joint_names=list(env.joint_names),
                                           points=[JointTrajectoryPoint(positions=[float(v) for v in target])])
                    traj.header.stamp = stamp(log)
                    bag.write(f'{NS}/arm/joint_trajectory', traj, log)
                    bag.write(f'{NS}/arm/joint_command', Float64MultiArray(data=[float(v) for v in target]), log)
                rows.append((q.copy(), target.copy(), rgb))
                env.step_to(target, FRAME_DT_NS / 1e9)
                t += FRAME_DT_NS
            done = TaskStatus(episode=ep, instruction=env.instruction, done=True, success=bool(env.success()))
            bag.write(f'{NS}/task/status', done, t)
            truth.append(rows)
            t += FRAME_DT_NS
    env.close()
    return truth
