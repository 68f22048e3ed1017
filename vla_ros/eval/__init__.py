"""Recording and evaluation without ROS: rosbag2 I/O (bag_io), bag -> metrics (metrics),
reports and plots (report), and the `vla_evaluate` command line (evaluate)."""
