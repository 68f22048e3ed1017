"""Test-wide setup: each test module talks DDS on its own ROS domain.

Modules set ROS_DOMAIN_ID at import, but pytest imports every module before running any,
so the last import would win for the whole session. This fixture re-applies the module's
own domain (its DOMAIN / DOMAIN_ID constant, else one derived from its name) before the
module's fixtures call rclpy.init() or start node subprocesses.
"""
import os
import zlib

import pytest


@pytest.fixture(autouse=True, scope='module')
def _module_ros_domain(request):
    module = request.module
    domain = None
    for name in ('DOMAIN', 'DOMAIN_ID', 'ROS_DOMAIN_ID'):
        if hasattr(module, name):
            domain = str(getattr(module, name))
            break
    if domain is None:
        domain = str(1 + zlib.crc32(module.__name__.encode()) % 200)
    previous = os.environ.get('ROS_DOMAIN_ID')
    os.environ['ROS_DOMAIN_ID'] = domain
    yield domain
    if previous is None:
        os.environ.pop('ROS_DOMAIN_ID', None)
    else:
        os.environ['ROS_DOMAIN_ID'] = previous
