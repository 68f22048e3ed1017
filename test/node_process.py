"""Test helper: run one vla_ros node in its own process (as `ros2 run` would) and always reap it."""
import contextlib
import os
import subprocess
import sys


@contextlib.contextmanager
def node_process(module: str, namespace: str, params_file, domain):
    """Start `module.main()` with a params file in `namespace` on ROS domain `domain`; stop it on exit."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    proc = subprocess.Popen([sys.executable, '-c', f'from {module} import main; main()',
                             '--ros-args', '-r', f'__ns:={namespace}', '--params-file', str(params_file)], env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def nodes_under_test(modules, namespace: str, params_file, domain, client_name: str):
    """Each of `modules` in its own process (node_process) plus a client rclpy node `client_name` in this
    process, all in `namespace` on `domain`; yields (client node, [processes]) and tears everything down."""
    import rclpy
    from rclpy.node import Node
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(node_process(m, namespace, params_file, domain)) for m in modules]
        rclpy.init()
        node = Node(client_name, namespace=namespace)
        try:
            yield node, procs
        finally:
            node.destroy_node()
            rclpy.shutdown()


def watch_diagnostics(node, status_name: str, on_values):
    """Call `on_values({key: value})` for every /diagnostics status named `status_name` (fully qualified)."""
    from diagnostic_msgs.msg import DiagnosticArray

    def on_array(msg):
        for status in msg.status:
            if status.name == status_name:
                on_values({kv.key: kv.value for kv in status.values})

    return node.create_subscription(DiagnosticArray, '/diagnostics', on_array, 10)


def bringup_listening(args, domain, client_name: str, cwd, timeout_s: float = 300.0):
    """Run `python -m vla_ros.bringup ARGS` on `domain` to its end while a client node in /vla records the
    per-tick commands (`arm/joint_command`), their stamped mirror (`action/command`) and `joint_states`.
    Returns (return code, output, commands, stamped, states); the bringup is killed after `timeout_s`."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from vla_ros.nodes.common import SENSOR_QOS, reliable_qos

    topics = {'arm/joint_command': (Float64MultiArray, reliable_qos()), 'action/command': (JointState, SENSOR_QOS),
              'joint_states': (JointState, SENSOR_QOS)}
    returncode, out, got = bringup_recording(args, domain, client_name, cwd, topics, timeout_s)
    commands, stamped, states = ([m for _, m in got[t]] for t in topics)
    return returncode, out, commands, stamped, states


def bringup_recording(args, domain, client_name: str, cwd, topics, timeout_s: float = 300.0):
    """Run `python -m vla_ros.bringup ARGS` on `domain` to its end while a client node in /vla subscribes to
    `topics` ({relative name: (message type, QoS)}). Returns (return code, output, {name: [(arrival
    time.monotonic(), message)]}); the bringup is killed after `timeout_s`."""
    import time

    import rclpy
    from rclpy.node import Node

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, '-m', 'vla_ros.bringup'] + list(args), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    rclpy.init()
    node = Node(client_name, namespace='/vla')
    got = {name: [] for name in topics}
    for name, (msg_type, qos) in topics.items():
        node.create_subscription(msg_type, name, lambda m, box=got[name]: box.append((time.monotonic(), m)), qos)
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        out = proc.communicate(timeout=30)[0]
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return proc.returncode, out, got
