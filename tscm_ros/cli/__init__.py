"""Console scripts, one module each (``setup.py`` entry points), sharing :mod:`tscm_ros.cli.common`.

Only this package imports ``argparse``: every module here parses its command line and calls plain, typed
functions of the library (``tscm_ros.pipelines``, ``tscm_ros.evaluation``, ``tscm_ros.export`` ...). The ROS
tools (:mod:`~tscm_ros.cli.bag_player`, :mod:`~tscm_ros.cli.online_offline`) import :mod:`tscm_ros.ros` inside
``main`` only, so every module here imports without rclpy.
"""
