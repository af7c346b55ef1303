"""Launch place_recognition_node with a parameter file and the usual overrides.

    ros2 launch tscm_ros place_recognition.launch.py image_topic:=/camera/image_raw \
        model_path:=/path/to/student map_path:=/data/maps/office device:=cuda

    # a fleet map (docs/FLEET.md): the shared server map, map_path as this robot's local copy
    ros2 launch tscm_ros place_recognition.launch.py namespace:=robot7 model_path:=/path/to/student \
        map_path:=/data/maps/robot7 map_uri:=service=fleet robot_id:=robot7 session_id:=2024-06-01-am

Launch arguments left empty keep the value from ``params_file``; non-empty ones override it. That includes
``use_sim_time``: by default (empty) the parameter file decides; ``use_sim_time:=true|false`` overrides it.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "tscm_ros"
OVERRIDABLE = ("model_path", "map_path", "device", "map_uri", "robot_id", "session_id")
BOOLEAN_OVERRIDABLE = ("use_sim_time",)
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parameter_overrides(arguments: dict) -> dict:
    """Node parameters from launch argument values: only the non-empty ones (empty = the params file's value).

    ``arguments`` maps the names in ``OVERRIDABLE`` / ``BOOLEAN_OVERRIDABLE`` to their launch values (str).
    """
    overrides = {}
    for name in OVERRIDABLE:
        value = arguments.get(name, "")
        if value:
            overrides[name] = value
    for name in BOOLEAN_OVERRIDABLE:
        value = arguments.get(name, "").strip().lower()
        if not value:
            continue
        if value not in _BOOLEANS:
            raise ValueError(
                f"launch argument {name}:={arguments[name]!r}: use true or false (or leave it empty)"
            )
        overrides[name] = _BOOLEANS[value]
    return overrides


def _launch_setup(context, *args, **kwargs):
    """Build the node once the launch arguments are known, passing only the non-empty overrides."""
    values = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDABLE + BOOLEAN_OVERRIDABLE}
    overrides = parameter_overrides(values)
    node = Node(
        package=PACKAGE,
        executable="place_recognition_node",
        name="place_recognition_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[
            ("image", LaunchConfiguration("image_topic")),
            ("image/compressed", [LaunchConfiguration("image_topic"), "/compressed"]),
            ("odom", LaunchConfiguration("odom_topic")),
        ],
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image_topic",
                default_value="/camera/image_raw",
                description="camera topic (sensor_msgs/Image; +/compressed with image_transport: compressed)",
            ),
            DeclareLaunchArgument("odom_topic", default_value="/odom", description="nav_msgs/Odometry topic"),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([share, "config", "place_recognition.yaml"]),
                description="node parameter file",
            ),
            DeclareLaunchArgument(
                "model_path", default_value="", description="trained TSCM student (empty: file)"
            ),
            DeclareLaunchArgument("map_path", default_value="", description="place map path (empty: file)"),
            DeclareLaunchArgument(
                "device", default_value="", description="auto|cpu|cuda|cuda:N (empty: file)"
            ),
            DeclareLaunchArgument(
                "map_uri",
                default_value="",
                description="fleet map: postgresql://... URI or libpq conninfo such as service=fleet, "
                "with map_path as the local copy; no passwords here (~/.pgpass, service file) (empty: file)",
            ),
            DeclareLaunchArgument(
                "robot_id",
                default_value="",
                description="fleet map: robot of this node's places (empty: file; there '' = the namespace)",
            ),
            DeclareLaunchArgument(
                "session_id",
                default_value="",
                description="fleet map: session of this run's places (empty: file; there '' = start time)",
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="",
                description="true: /clock (bag replay), false: wall clock, empty: the params file's value",
            ),
            DeclareLaunchArgument(
                "fastdds_localhost",
                default_value="false",
                description="use the package's loopback-only Fast DDS profile (all nodes on this computer)",
            ),
            SetEnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                PathJoinSubstitution([share, "config", "fastdds_localhost.xml"]),
                condition=IfCondition(LaunchConfiguration("fastdds_localhost")),
            ),
            OpaqueFunction(function=_launch_setup),
        ]
    )
