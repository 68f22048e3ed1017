"""Build-time stand-in for the `ament_package` helper, which has no PyPI wheel.

ament_cmake_core only asks it for the paths of environment-hook templates; the
vla_ros setup script puts this directory on PYTHONPATH while it runs CMake on
vla_ros_msgs against the ROS 2 wheels. On a real ROS 2 install the genuine
ament_package is used and this directory is never looked at.
"""
