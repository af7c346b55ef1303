"""tscm_ros: TSCM visual place recognition for ROS 2.

The core (models, losses, data, place map, loop-closure logic, training) is ROS-free and importable
without rclpy; only ``tscm_ros.ros`` imports rclpy.
"""

__version__ = "0.1.0"
