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
