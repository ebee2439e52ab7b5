"""ROS 2 side: the only package that imports rclpy and ROS messages. Thin: maps topics and parameters
onto the ROS-free runtime (never torch)."""
