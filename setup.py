"""ament_python setup for vla_ros (also pip-installable into the project venv)."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'vla_ros'


def _files(pattern):
    return [p for p in glob(pattern) if os.path.isfile(p)]


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'scripts']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', _files('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', _files('config/*.yaml')),
        ('share/' + PACKAGE + '/checkpoints', _files('checkpoints/*')),
        ('share/' + PACKAGE + '/checkpoints/vision_encoder', _files('checkpoints/vision_encoder/*')),
    ],
    package_data={PACKAGE: ['sim/assets/*.xml', 'config_defaults/*.yaml']},
    include_package_data=True,
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
            'vla_eval_episodes = vla_ros.eval.harness:main',
            'vla_train = vla_ros.training.cli:main',
            'vla_make_demo_models = vla_ros.models.make_demo_models:main',
        ],
    },
)
