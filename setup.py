"""ament_python setup for vla_ros (also pip-installable into the project venv)."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'vla_ros'
os.chdir(os.path.dirname(os.path.abspath(__file__)))  # data_files paths are relative to this file


def _files(pattern):
    return [p for p in glob(pattern) if os.path.isfile(p)]


def _tree(src, dst):
    """data_files entries installing every file under `src` into `dst`, keeping sub-directories."""
    entries = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        if files:
            entries.append((os.path.join(dst, os.path.relpath(root, src)).rstrip('/.') or dst,
                            sorted(os.path.join(root, f) for f in files)))
    return entries


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'scripts']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', _files('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', _files('config/*.yaml')),
        ('share/' + PACKAGE + '/config/tasks', _files('config/tasks/*.yaml')),
    ]
    # the demo encoder/VLM and the trained action head: the parameters' package:// defaults point here
    + _tree('models', 'share/' + PACKAGE + '/models')
    + _tree('checkpoints', 'share/' + PACKAGE + '/checkpoints'),
    package_data={PACKAGE + '.sim': ['assets/*.xml']},
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='vla_ros developers',
    maintainer_email='dev@vla-ros.invalid',
    description='Efficient dual-system Vision-Language-Action policies as ROS 2 nodes.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'perception_node = vla_ros.nodes.perception_node:main',
            'planner_node = vla_ros.nodes.planner_node:main',
            'action_node = vla_ros.nodes.action_node:main',
            'sim_arm_node = vla_ros.nodes.sim_arm_node:main',
            'recorder_node = vla_ros.nodes.recorder_node:main',
            'vla_bringup = vla_ros.bringup:main',
            'vla_evaluate = vla_ros.eval.evaluate:main',
            'vla_replay = vla_ros.eval.replay:main',
            'vla_export_lerobot = vla_ros.eval.lerobot_export:main',
            'vla_eval_episodes = vla_ros.eval.harness:main',
            'vla_compare_rows = vla_ros.eval.paired:main',
            'vla_train = vla_ros.training.cli:main',
            'vla_make_demo_models = vla_ros.models.make_demo_models:main',
        ],
    },
)
