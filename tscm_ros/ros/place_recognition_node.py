"""place_recognition_node: camera images -> TSCM descriptors -> place map -> loop-closure candidates.

Subscriptions: ``image`` (sensor_msgs/Image) or ``image/compressed`` (CompressedImage), optional ``odom``,
``camera_info`` and ``depth``. Publications: ``~/loop_candidates``, ``~/loop_closures`` (verified only),
``lio_loop/loop_closure_detection``, ``~/matched_pose``, ``~/markers``, ``~/match_image`` (only while
subscribed), ``~/descriptor`` (optional), ``~/fleet_ids`` (fleet maps), ``/diagnostics``. Services:
``~/save_map``, ``~/reset_map``, ``~/set_mapping``. docs/ROS_INTERFACES.md documents every field. The node
only turns messages into calls of a :class:`~tscm_ros.recognition.RecognitionSession` and its results into
messages; with ``map_uri`` the session's map is the shared fleet map (docs/FLEET.md).

Image callbacks (executor threads) only drop the message into a one-frame slot; the inference loop on the
main thread decodes, describes and matches the newest frame, so the backlog never grows and overwritten
frames are counted as dropped. All stamps come
from message headers (``use_sim_time`` only affects the diagnostics stamp).

Executor: services, parameter callbacks and /diagnostics never wait on inference or disk, so one
executor thread serves them all (rclpy's EventsExecutor by default; ``TSCM_EXECUTOR=multi_threaded`` gives
each kind of callback its own group and thread). Saves run on a dedicated saver thread
(:class:`~tscm_ros.ros.map_saver.MapSaver`; the map's lock is held only for the snapshot); ``~/save_map`` is
a coroutine that answers once its save is on disk without holding the executor, autosave never waits.
Parameter changes and ``~/reset_map`` are handed to the session without waiting for a frame (applied at once
when the session is between frames, else at the next frame boundary). /diagnostics reads lock-free counter
snapshots.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64MultiArray, Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from tscm_ros.depth import DepthDecodeError, depth_msg_to_metres
from tscm_ros.features import CameraIntrinsics, decode_thumbnail
from tscm_ros.images import (
    REASONS,
    ImageDecodeError,
    check_image_header,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
)
from tscm_ros.placemap import Pose
from tscm_ros.poses import NS_PER_S, PoseBuffer
from tscm_ros.recognition import RecognitionConfig, RecognitionError, RecognitionResult, RecognitionSession
from tscm_ros.ros import messages
from tscm_ros.ros.futures import awaitable
from tscm_ros.ros.heap import trim_heap
from tscm_ros.ros.latest_slot import LatestSlot
from tscm_ros.ros.map_saver import MapSaver, SaveOutcome
from tscm_ros.ros.parameters import (
    PARAMETERS,
    PARAMETERS_BY_NAME,
    parameter_type_error,
    unknown_overrides,
    unknown_parameters_message,
    validate,
)
from tscm_ros.ros.shutdown import log, run_until_shutdown, shutdown_quietly
from tscm_ros.ros.stats import DurationStats, LostFrameEstimator, PeakMeter, RateMeter, ReasonCounter
from tscm_ros.ros.threads import lower_priority, thread_ids
from tscm_ros.timing import StageTimer
from tscm_ros.verification import draw_matches

NODE_NAME = "place_recognition_node"
DIAGNOSTIC_NAME = f"{NODE_NAME}: place recognition"
FLEET_IDS_NAME = f"{NODE_NAME}: fleet ids"
STALE_INPUT_S = 5.0  # diagnostics WARN when no image arrived for this long
RECENT_PROBLEM_S = 10.0  # bad messages / errors this recent raise the diagnostics level
BAD_MESSAGE_LOG_PERIOD_S = 5.0
MAX_MARKER_EDGES = 2000
HEAP_TRIM_PERIOD_S = 5.0  # freed heap pages back to the OS (ros/heap.py)
DEPTH_BUFFER = 10  # depth images kept for pairing with colour images by stamp
STAGES = ("decode", "inference", "features", "retrieve", "select", "sequence", "verify", "publish")
LOST_FRAMES_WARN = 0.1  # diagnostics WARN when this fraction of the camera's frames never reached the node
FLEET_PREFIXED_KEYS = ("backend", "target", "schema", "last_error")  # /diagnostics: map_<key>
MAP_NEARLY_FULL = 0.9  # diagnostics WARN when the map holds this fraction of max_places
SAVE_SERVICE_TIMEOUT_S = 300.0  # ~/save_map answers "still running" after this long
# executor threads: one per callback group (subscriptions, parameters, control services, save_map, timers)
EXECUTOR_THREADS = 5
EXECUTOR_ENV = "TSCM_EXECUTOR"  # which executor spins the callbacks (see create_executor)
EXECUTORS = ("multi_threaded", "events")
DEFAULT_EXECUTOR = "events"
EVENTS_SPIN_TIMEOUT_S = 0.1
# How long a thread may keep the GIL while another waits (Python's default: 5 ms). A service call hands the
# GIL back and forth dozens of times between the executor and the inference loop; with 5 ms per handover
# ~/reset_map took p99 463 ms in test_ros_service_storm, with 0.5 ms 90 ms (set_mapping 271 -> 54 ms).
GIL_SWITCH_INTERVAL_S = 0.0005

__all__ = ["PARAMETERS", "PlaceRecognitionNode", "StartupError", "main"]


class StartupError(RuntimeError):
    """A configuration problem that stops the node at start-up with one clear message."""


class PlaceRecognitionNode(Node):
    """The ROS shell around Describer + PlaceMap + LoopClosureDetector (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._setup()
        except BaseException:
            self.destroy_node()  # release the DDS entities before the error propagates
            raise

    def _setup(self) -> None:
        self.add_on_set_parameters_callback(self._validate_parameters)
        for spec in PARAMETERS:
            self._declare(spec)
        if unknown := unknown_overrides(self):
            message = unknown_parameters_message(unknown)
            if self.get_parameter("strict_parameters").value:
                raise StartupError(f"{message} (strict_parameters: true)")
            self.get_logger().warning(message)
        self._config: dict[str, Any] = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        self._check_startup_combination()

        started_threads = thread_ids()
        self._describer = self._create_describer()
        self._inference_pool = thread_ids() - started_threads  # OpenMP / ORT workers (see ros/threads.py)
        self._places = self._create_session()
        self._places.prepare_reset()  # ~/reset_map then only swaps maps
        self._parameter_lock = threading.Lock()  # concurrent parameter sets (service + set_mapping)
        self._saver = MapSaver(self._save_now, self._on_save_done)
        self._decode = image_msg_to_rgb if self._config["image_transport"] == "raw" else compressed_msg_to_rgb

        # state shared between the executor threads and the inference loop
        self._slot: LatestSlot[tuple[Any, float]] = LatestSlot()
        self._poses = PoseBuffer()
        self._depths: deque[Image] = deque(maxlen=DEPTH_BUFFER)
        self._depth_lock = threading.Lock()
        self._camera_info: CameraIntrinsics | None = None
        self._match_image: tuple[Any, np.ndarray, RecognitionResult] | None = None
        self._edges: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=MAX_MARKER_EDGES)
        self._input_rate = RateMeter()
        self._processed_rate = RateMeter()
        self._inference_ms = DurationStats()
        self._frame_time = PeakMeter()  # longest hold of the inference loop by one frame, per /diagnostics
        self._bad_messages = ReasonCounter()
        self._bad_log_times: dict[str, float] = {}
        self._keyframes = 0
        self._candidates_published = 0
        self._closures_published = 0
        self._stages = StageTimer(STAGES)
        self._lost = LostFrameEstimator()
        self._last_error: tuple[float, str] | None = None
        self._started = time.monotonic()
        self._fleet_ids: dict[str, str] = {}  # "robot/<hash>" / "session/<hash>" -> id, for ~/fleet_ids

        # parameters use the node's default group; each other kind gets its own (see EXECUTOR_THREADS)
        self._subscription_group = MutuallyExclusiveCallbackGroup()  # cheap callbacks: header check, slot
        self._service_group = MutuallyExclusiveCallbackGroup()  # reset_map, set_mapping: never wait
        self._save_group = MutuallyExclusiveCallbackGroup()  # save_map: awaits its save, nothing else
        self._timer_group = MutuallyExclusiveCallbackGroup()  # /diagnostics, autosave: never wait
        self._create_interfaces()
        if hasattr(self, "add_post_set_parameters_callback"):
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # rclpy before Iron: apply from the validating callback
            self._apply_after_validation = True

        self._constructed = True
        self._finished = False
        self._shutdown_save_ok = True
        fleet = ""
        if self._places.is_fleet:
            diagnostics = self._places.map_diagnostics()
            fleet = (
                f" (fleet map {diagnostics['target']} schema {diagnostics['schema']}: "
                f"{diagnostics['connection_state']}, robot {self._places.robot_id!r}, "
                f"session {self._places.session_id!r})"
            )
        self.get_logger().info(
            f"ready: model {self._describer.label} ({self._describer.backend} on {self._describer.device}), "
            f"map {len(self._places)} places{fleet}, mode {self._config['mode']}, "
            f"subscribed to {self._image_subscription.topic_name} ({self._config['image_transport']})"
        )

    def _declare(self, spec) -> None:
        """Declare one parameter; string arrays with their type (``[]`` alone would be a BYTE_ARRAY, and rcl
        reads an empty YAML list as "not set")."""
        if not spec.is_string_array:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
            return
        parameter = self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, spec.descriptor())
        if parameter.type_ == Parameter.Type.NOT_SET:
            self.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, list(spec.default))])

    # ------------------------------------------------------------------ start-up
    def _check_startup_combination(self) -> None:
        config = self._config
        if config["load_map"] and not config["map_path"]:
            raise StartupError("load_map is true but map_path is empty: set map_path to the map to load")
        if config["autosave_period_s"] > 0 and not config["map_path"]:
            raise StartupError("autosave_period_s > 0 needs map_path: set map_path or autosave_period_s:=0.0")
        if config["backend"] in ("onnxruntime", "tensorrt") and not config["model_path"]:
            raise StartupError(
                f"backend {config['backend']} needs model_path (a .onnx file or an exported model directory)"
            )

    def _create_describer(self):
        from tscm_ros.describer import create_describer

        config = self._config
        model_path = config["model_path"] or None
        if model_path is not None and not Path(model_path).exists():
            raise StartupError(f"model_path {model_path!r} does not exist")
        try:
            describer = create_describer(
                model_path,
                backend=config["backend"],
                device=config["device"],
                fp16=config["fp16"],
                precision=config["precision"],
                batch_size=1,
                num_threads=config["num_threads"] or None,
            )
        except Exception as error:  # one clear line, whatever the loader raised
            raise StartupError(f"cannot load model {model_path or '(untrained student)'}: {error}") from error
        if model_path is None:
            banner = "=" * 20
            self.get_logger().warning(
                f"{banner} model_path is empty: using an {describer.label} network. Its loop candidates are "
                f"MEANINGLESS; set model_path to a trained TSCM student for real use {banner}"
            )
        return describer

    def _robot_id(self) -> str:
        """``robot_id``, or the namespace without the leading slash, or the host name (namespace /)."""
        if self._config["robot_id"]:
            return self._config["robot_id"]
        return self.get_namespace().strip("/") or socket.gethostname() or "robot"

    def _create_session(self) -> RecognitionSession:
        config = self._config
        try:
            places = RecognitionSession.open(
                dim=self._describer.dim,
                model_fingerprint=self._describer.fingerprint,
                map_path=config["map_path"] or None,
                load=config["load_map"],
                index_spec=config["index_spec"],
                options=config,
                map_uri=config["map_uri"],
                map_schema=config["map_schema"],
                robot_id=self._robot_id() if config["map_uri"] else "",
                session_id=config["session_id"],
                max_places=config["max_places"] or None,
            )
        except RecognitionError as error:
            raise StartupError(str(error)) from error
        if places.is_fleet:
            if config["max_places"]:
                self.get_logger().warning("max_places applies to a local map only: ignored with map_uri")
            return places
        if config["map_path"] and not config["load_map"] and Path(config["map_path"]).exists():
            self.get_logger().warning(
                f"map_path {config['map_path']} exists but load_map is false: the next save overwrites it"
            )
        return places

    def _create_interfaces(self) -> None:
        config = self._config
        reliability = ReliabilityPolicy.RELIABLE if config["reliable_qos"] else ReliabilityPolicy.BEST_EFFORT
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=reliability,
            durability=DurabilityPolicy.VOLATILE,
        )
        if config["image_transport"] == "raw":
            message_type, topic = Image, "image"
        else:
            message_type, topic = CompressedImage, "image/compressed"
        self._image_subscription = self.create_subscription(
            message_type, topic, self._on_image, image_qos, callback_group=self._subscription_group
        )
        self._source = self._image_subscription.topic_name
        odom_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=50,
            reliability=qos_profile_sensor_data.reliability,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.create_subscription(
            Odometry, "odom", self._on_odom, odom_qos, callback_group=self._subscription_group
        )
        self.create_subscription(
            CameraInfo, "camera_info", self._on_camera_info, odom_qos, callback_group=self._subscription_group
        )
        self.create_subscription(
            Image, "depth", self._on_depth, image_qos, callback_group=self._subscription_group
        )

        self._candidates_publisher = self.create_publisher(PointCloud2, "~/loop_candidates", 10)
        self._closures_publisher = self.create_publisher(PointCloud2, "~/loop_closures", 10)
        self._match_image_publisher = self.create_publisher(Image, "~/match_image", 1)
        self._lio_sam_publisher = self.create_publisher(
            Float64MultiArray, "lio_loop/loop_closure_detection", 10
        )
        self._matched_pose_publisher = self.create_publisher(PoseWithCovarianceStamped, "~/matched_pose", 10)
        self._markers_publisher = self.create_publisher(MarkerArray, "~/markers", 1)
        self._descriptor_publisher = self.create_publisher(PointCloud2, "~/descriptor", 10)
        self._fleet_ids_publisher = None
        if self._places.is_fleet:  # latched: the id -> name table of match_robot / match_session
            latched = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )  # fmt: skip
            self._fleet_ids_publisher = self.create_publisher(DiagnosticStatus, "~/fleet_ids", latched)
            self._note_identities([(self._places.robot_id, self._places.session_id)])
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        group = self._service_group
        self.create_service(Trigger, "~/save_map", self._on_save_map, callback_group=self._save_group)
        self.create_service(Trigger, "~/reset_map", self._on_reset_map, callback_group=group)
        self.create_service(SetBool, "~/set_mapping", self._on_set_mapping, callback_group=group)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=self._timer_group)
        self.create_timer(HEAP_TRIM_PERIOD_S, trim_heap, callback_group=self._timer_group)
        self._autosave_timer = None
        self._schedule_autosave(config["autosave_period_s"])

    # ------------------------------------------------------------------ parameters
    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """What ``ros2 param set``/``load`` call: a wrong type is rejected with a message naming the parameter
        (rclpy checks types before the on-set callbacks, with a message that names neither)."""
        parameter_list = [self._empty_string_array(parameter) for parameter in parameter_list]
        for parameter in parameter_list:
            if (error := parameter_type_error(self, parameter)) is not None:
                return SetParametersResult(successful=False, reason=error)
        return super().set_parameters_atomically(parameter_list)

    @staticmethod
    def _empty_string_array(parameter: Parameter) -> Parameter:
        """An empty list (``[]`` has no element type: YAML tools send it as another array type or unset)
        for a STRING_ARRAY parameter becomes an empty STRING_ARRAY."""
        spec = PARAMETERS_BY_NAME.get(parameter.name)
        if spec is None or not spec.is_string_array or parameter.type_ == Parameter.Type.STRING_ARRAY:
            return parameter
        if parameter.value is None or (isinstance(parameter.value, (list, tuple)) and not parameter.value):
            return Parameter(parameter.name, Parameter.Type.STRING_ARRAY, [])
        return parameter

    def _validate_parameters(self, parameters: Sequence[Parameter]) -> SetParametersResult:
        """Reject bad values (at declaration and at runtime) with a message naming the parameter."""
        pending = dict(getattr(self, "_config", {}))
        for parameter in parameters:
            error = validate(parameter.name, parameter.value)
            if error is not None:
                return SetParametersResult(successful=False, reason=error)
            pending[parameter.name] = parameter.value
        if hasattr(self, "_config"):  # runtime change: check the combination too
            if pending["autosave_period_s"] > 0 and not pending["map_path"]:
                return SetParametersResult(successful=False, reason="autosave_period_s > 0 needs map_path")
            try:
                RecognitionConfig.from_options(pending)
            except (TypeError, ValueError) as error:
                return SetParametersResult(successful=False, reason=str(error))
            if getattr(self, "_apply_after_validation", False):
                self._apply_parameters(parameters)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: Sequence[Parameter]) -> None:
        """Hand validated values over without waiting: the node's config dict is replaced (never changed in
        place), the session gets an immutable RecognitionConfig at its next frame boundary."""
        changed = {
            parameter.name: parameter.value for parameter in parameters if parameter.name in self._config
        }
        with self._parameter_lock:
            self._config = {**self._config, **changed}
            self._places.request_configure(RecognitionConfig.from_options(self._config))
        if "autosave_period_s" in changed:
            self._schedule_autosave(changed["autosave_period_s"])
        if "mode" in changed:
            self.get_logger().info(f"mode: {changed['mode']}")

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Never blocks: a header check (no pixel read, no allocation), then the newest good message replaces
        any unprocessed one, so a flood of bad messages cannot push good frames out of the slot."""
        now = time.monotonic()
        self._input_rate.tick(now)
        self._lost.add(messages.stamp_to_ns(msg.header.stamp))
        try:
            check_image_header(msg, self._config["max_image_pixels"])
        except ImageDecodeError as error:
            self._count_bad_message(error.reason, str(error))
            return
        self._slot.put((msg, now))

    def _on_odom(self, msg: Odometry) -> None:
        position = msg.pose.pose.position
        orientation = msg.pose.pose.orientation
        self._poses.add(
            messages.stamp_to_ns(msg.header.stamp),
            (position.x, position.y, position.z),
            (orientation.x, orientation.y, orientation.z, orientation.w),
            msg.header.frame_id,
        )

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera_info = CameraIntrinsics.from_camera_info_k(list(msg.k), msg.width, msg.height)
        except ValueError as error:
            self._count_bad_message("bad_camera_info", f"camera_info: {error}")

    def _on_depth(self, msg: Image) -> None:
        with self._depth_lock:
            self._depths.append(msg)

    def _depth_for(self, stamp_ns: int) -> np.ndarray | None:
        """The aligned depth image (metres) stamped within ``depth_max_offset_s`` of ``stamp_ns``, if any."""
        tolerance = int(self._config["depth_max_offset_s"] * NS_PER_S)
        with self._depth_lock:
            stamped = [(abs(messages.stamp_to_ns(m.header.stamp) - stamp_ns), m) for m in self._depths]
        best = min(stamped, key=lambda item: item[0], default=None)
        if best is None or best[0] > tolerance:
            return None
        try:
            return depth_msg_to_metres(best[1], self._config["max_image_pixels"])
        except DepthDecodeError as error:
            self._count_bad_message("bad_depth", f"depth: {error}")
            return None

    def _intrinsics(self, width: int, height: int) -> CameraIntrinsics | None:
        """Parameters first, else the latest camera_info; scaled when its size differs from the image."""
        fx, fy, cx, cy = self._config["camera_intrinsics"]
        if fx > 0 and fy > 0:
            return CameraIntrinsics(fx, fy, cx, cy, width, height)
        info = self._camera_info
        if info is None:
            return None
        return info if info.size == (width, height) else info.scaled_to(width, height)

    async def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Answers once the save is on disk. A coroutine: it awaits the saver thread's write without holding
        an executor thread, so every other callback runs meanwhile (also on the single-threaded
        EventsExecutor)."""
        if not self._config["map_path"]:
            response.success = False
            response.message = "map_path is empty: start the node with map_path set to save the map"
            return response
        save = awaitable(self._saver.request("service"), self.executor, SAVE_SERVICE_TIMEOUT_S)
        try:
            outcome = await save
        except TimeoutError:
            response.success = False
            response.message = (
                f"the save is still running after {SAVE_SERVICE_TIMEOUT_S:.0f} s; its outcome is logged"
            )
            return response
        except Exception as error:
            response.success, response.message = False, str(error)
            return response
        response.success, response.message = True, outcome.message
        return response

    def _on_reset_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Never waits for a frame: done at once, or before the next frame is processed."""
        try:
            applied = self._places.request_reset()
        except RecognitionError as error:  # a fleet map: places on the server are not deleted
            response.success, response.message = False, str(error)
            return response
        self._edges.clear()
        when = "" if applied else " at the next frame boundary (the frame in flight goes to the old map)"
        response.success = True
        response.message = f"map emptied{when} (the file at map_path is untouched until saved)"
        self.get_logger().info(response.message)
        return response

    def _on_set_mapping(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        mode = "mapping" if request.data else "localization"
        result = self.set_parameters([Parameter("mode", value=mode)])[0]
        response.success = result.successful
        response.message = f"mode: {mode}" if result.successful else result.reason
        return response

    def _autosave(self) -> None:
        """Queue a save on the saver thread (never waits; joins a save already queued)."""
        if self._places.dirty and not self._saver.busy:
            self._saver.request("autosave")

    def _schedule_autosave(self, period_s: float) -> None:
        if self._autosave_timer is not None:
            self.destroy_timer(self._autosave_timer)
            self._autosave_timer = None
        if period_s > 0:
            self._autosave_timer = self.create_timer(
                period_s, self._autosave, callback_group=self._timer_group
            )

    def _save_now(self) -> str:
        """One save (on the saver thread): "saved N places to PATH", or raises with a clear message."""
        path = self._config["map_path"]
        try:
            count = self._places.save(path)
        except Exception as error:
            raise RuntimeError(f"saving the map to {path} failed: {error}") from error
        return f"saved {count} places to {path}"

    def _on_save_done(self, why: str, outcome: SaveOutcome | BaseException) -> None:
        if isinstance(outcome, SaveOutcome):
            message = f"{outcome.message} ({why}, {outcome.duration_s * 1000:.0f} ms)"
            if why == "autosave":
                self.get_logger().debug(message)
            else:
                self.get_logger().info(message)
        else:
            self._record_error(f"{outcome} ({why})")

    # ------------------------------------------------------------------ inference loop
    def run_inference_loop(self) -> None:
        """Describe and match the newest frame until shutdown; ``main`` runs this on the main thread.

        PyTorch's OpenMP intra-op parallelism ran 1.4-2.4x slower when called from a secondary thread on the
        2-core development machine (same model, same thread count), so inference owns the main thread and
        the executor spins in a background thread instead.
        """
        lower_priority(self._config["inference_nice"], self._inference_pool)
        while not self._slot.closed and rclpy.ok(context=self.context):
            item = self._slot.take(timeout=0.5)
            if item is None:
                self._places.apply_pending()  # idle: a frame boundary for waiting control requests
                continue
            msg, _received = item
            started = time.perf_counter()
            try:
                self._process(msg)
            except Exception as error:
                self._record_error(f"processing failed: {type(error).__name__}: {error}")
                self.get_logger().debug(traceback.format_exc())
            self._frame_time.add((time.perf_counter() - started) * 1000.0)

    def _process(self, msg: Image | CompressedImage) -> None:
        stamp_ns = messages.stamp_to_ns(msg.header.stamp)
        if not self._places.wants(stamp_ns):  # inside min_interval_s: not even decoded
            self._processed_rate.tick()
            return
        started = time.perf_counter()
        try:
            rgb = self._decode(msg, max_pixels=self._config["max_image_pixels"])
        except ImageDecodeError as error:
            self._count_bad_message(error.reason, str(error))
            return
        stamped = self._poses.lookup(stamp_ns, int(self._config["pose_max_age_s"] * NS_PER_S))
        pose = None
        if stamped is not None:
            pose = Pose(tuple(stamped.position), tuple(stamped.orientation_xyzw), stamped.frame_id)
        self._stages.record_since("decode", started)
        started = time.perf_counter()
        descriptor = self._describer.describe(rgb)[0]
        self._inference_ms.add((time.perf_counter() - started) * 1000.0)
        self._stages.record_since("inference", started)
        verify = self._config["verify"]
        height, width = rgb.shape[:2]
        result = self._places.process(
            descriptor, stamp_ns, frame_id=msg.header.frame_id, source=self._source, pose=pose,
            image=rgb if verify else None,
            depth=self._depth_for(stamp_ns) if verify else None,
            intrinsics=self._intrinsics(width, height) if verify else None,
        )  # fmt: skip
        for stage, milliseconds in result.timings_ms.items():
            self._stages.record(stage, milliseconds / 1000.0)
        self._processed_rate.tick()
        if result.is_keyframe:
            self._keyframes += 1
            started = time.perf_counter()
            self._publish_keyframe(msg.header, stamp_ns, descriptor, result, pose)
            if result.candidates and self._match_image_publisher.get_subscription_count() > 0:
                self._publish_match_image(msg.header, rgb, result)
            self._stages.record_since("publish", started)

    def _candidate_row(self, candidate) -> dict[str, float | int]:
        position = candidate.match_pose.position if candidate.match_pose is not None else (np.nan,) * 3
        robot = candidate.match_robot_id
        row: dict[str, float | int] = {
            "x": position[0],
            "y": position[1],
            "z": position[2],
            "query_id": candidate.query_id,
            "match_id": candidate.match_id,
            "match_stamp": messages.ns_to_seconds(candidate.match_stamp_ns),
            "similarity": candidate.similarity,
            "rank": candidate.rank,
            "inliers": candidate.inliers,
            "verified": int(candidate.verified),
            "sequence_score": candidate.sequence_score,
            "sequence_length": candidate.sequence_length,
            "match_robot": messages.identity_hash(robot),
            "match_session": messages.identity_hash(candidate.match_session_id),
            "inter_robot": int(bool(robot) and robot != self._places.robot_id),
        }
        verification = candidate.verification
        if candidate.verified and verification.translation is not None:  # rejected: no pose, NaN
            row.update(zip(("tx", "ty", "tz"), verification.translation, strict=True))
            row.update(zip(("qx", "qy", "qz", "qw"), verification.rotation_xyzw, strict=True))
            row["scale_known"] = int(verification.scale_known)
        return row

    def _publish_keyframe(self, header: Header, stamp_ns: int, descriptor: np.ndarray, result, pose) -> None:
        config = self._config
        rows = [self._candidate_row(candidate) for candidate in result.candidates]
        if self._fleet_ids_publisher is not None:
            self._note_identities((c.match_robot_id, c.match_session_id) for c in result.candidates)
        self._candidates_publisher.publish(messages.candidates_cloud(header, rows))
        self._candidates_published += len(rows)
        closures = [row for row, c in zip(rows, result.candidates, strict=True) if c.verified]
        if closures:
            self._closures_publisher.publish(messages.candidates_cloud(header, closures))
            self._closures_published += len(closures)
        if config["publish_descriptor"]:
            self._descriptor_publisher.publish(messages.descriptor_cloud(header, descriptor))
        if not result.candidates:
            return
        best = result.candidates[0]
        lio_sam_ok = (best.verified or not config["verify"]) and self._places.from_this_run(best)
        if config["publish_lio_sam"] and config["mode"] == "mapping" and lio_sam_ok:
            self._lio_sam_publisher.publish(messages.lio_sam_loop(stamp_ns, best.match_stamp_ns))
        if config["verify"] and not best.verified:
            return  # unverified candidates go to ~/loop_candidates only
        map_header = Header(stamp=header.stamp, frame_id=config["map_frame"])
        match_pose = best.match_pose
        if match_pose is not None:
            self._matched_pose_publisher.publish(
                messages.matched_pose_msg(
                    map_header, match_pose.position, match_pose.orientation, config["matched_pose_covariance"]
                )
            )
        if pose is not None and match_pose is not None:
            self._edges.append((np.asarray(pose.position), np.asarray(match_pose.position)))
            if config["publish_markers"] and self._markers_publisher.get_subscription_count() > 0:
                self._markers_publisher.publish(messages.loop_edge_markers(map_header, list(self._edges)))

    def _note_identities(self, identities) -> None:
        """Add robot / session ids to the ~/fleet_ids table; republish it (latched) when it grew."""
        table = self._fleet_ids
        size = len(table)
        for robot, session in identities:
            for kind, name in (("robot", robot), ("session", session)):
                if name:
                    table.setdefault(f"{kind}/{messages.identity_hash(name)}", name)
        if len(table) != size or size == 0:
            self._fleet_ids_publisher.publish(
                messages.diagnostic_status(
                    FLEET_IDS_NAME, self._places.robot_id, DiagnosticStatus.OK, "", table
                )
            )

    def _publish_match_image(self, header: Header, rgb: np.ndarray, result: RecognitionResult) -> None:
        """query | best match (its stored thumbnail) side by side with the inlier matches drawn."""
        best = result.candidates[0]
        thumbnail = self._places.place_map.get_thumbnail(best.match_id)
        stored = self._places.place_map.get_features([best.match_id]).get(best.match_id)
        if thumbnail is None or stored is None or result.query_features is None or best.verification is None:
            return
        from tscm_ros.features import LocalFeatures

        try:
            match_features = LocalFeatures.from_bytes(stored)
            picture = draw_matches(
                rgb, decode_thumbnail(thumbnail), result.query_features, match_features, best.verification
            )
        except ValueError as error:
            self._record_error(f"match image failed: {error}")
            return
        self._match_image_publisher.publish(messages.rgb_image_msg(header, picture))

    # ------------------------------------------------------------------ diagnostics
    def _count_bad_message(self, reason: str, detail: str) -> None:
        self._bad_messages.add(reason)
        now = time.monotonic()
        if now - self._bad_log_times.get(reason, -1e9) >= BAD_MESSAGE_LOG_PERIOD_S:
            self._bad_log_times[reason] = now
            self.get_logger().warning(f"bad image message ignored ({detail}); counted in /diagnostics")

    def _record_error(self, message: str) -> None:
        self._last_error = (time.monotonic(), message)
        self.get_logger().error(message, throttle_duration_sec=5.0)

    def diagnostics_status(self) -> DiagnosticStatus:
        """The node's health as one DiagnosticStatus (also used by /diagnostics)."""
        now = time.monotonic()
        bad = self._bad_messages.snapshot()
        counters = self._places.counters  # lock-free snapshot: never waits for a frame
        values: dict[str, object] = {
            "input_rate_hz": f"{self._input_rate.rate(now):.2f}",
            "processed_rate_hz": f"{self._processed_rate.rate(now):.2f}",
            "frames_received": self._slot.received,
            "frames_processed": self._processed_rate.total,
            "frames_dropped": self._slot.dropped,
            "frames_lost_before_node": self._lost.lost,
            "recent_loss_before_node": f"{self._lost.recent_loss():.3f}",
            "camera_period_ms": f"{(self._lost.period_s or float('nan')) * 1000:.1f}",
            "keyframes": self._keyframes,
            "candidates_published": self._candidates_published,
            "closures_published": self._closures_published,
            "inference_ms_p50": f"{self._inference_ms.percentile(50):.1f}",
            "inference_ms_p95": f"{self._inference_ms.percentile(95):.1f}",
            "frame_time_max_ms": f"{self._frame_time.peak(now):.0f}",  # longest frame of the last 5 s
            "frames_over_1s": self._frame_time.stalls,  # frames that held the inference loop > 1 s
            "map_size": counters.places,
            "max_places": counters.max_places or 0,
            "map_utilisation": f"{counters.utilisation:.3f}" if counters.utilisation is not None else "",
            "places_refused_full": counters.refused_full,
            "save_in_progress": self._saver.busy,
            "saves_completed": self._saver.completed,
            "saves_failed": self._saver.failed,
            "last_save_ms": f"{(self._saver.last_duration_s or float('nan')) * 1000:.0f}",
            "mode": self._config["mode"],
            "model": self._describer.label,
            "bad_messages": sum(bad.values()),
        }
        for reason in (*REASONS, "bad_depth", "bad_camera_info"):
            values[f"bad_{reason.removeprefix('bad_')}"] = bad.get(reason, 0)
        for reason, count in sorted(counters.reasons.items()):
            values[f"unverified_{reason}"] = count
        values["verification"] = "on" if self._config["verify"] else "off"
        values["time_jumps"] = counters.time_jumps
        fleet = self._places.map_diagnostics()  # fleet map: connection_state, outbox_depth, ... (no password)
        for key, value in fleet.items():
            values[f"map_{key}" if key in FLEET_PREFIXED_KEYS else key] = value
        for stage, milliseconds in self._stages.p50_ms().items():
            if milliseconds is not None:  # None: the stage has not run yet
                values[f"stage_{stage}_ms_p50"] = f"{milliseconds:.1f}"
        values["last_error"] = self._last_error[1] if self._last_error else ""

        level, problems = DiagnosticStatus.OK, []
        if self._last_error and now - self._last_error[0] < RECENT_PROBLEM_S:
            level = DiagnosticStatus.ERROR
            problems.append(self._last_error[1])
        last_image = self._input_rate.last_time
        if (last_image or self._started) < now - STALE_INPUT_S:
            problems.append(f"no images on {self._image_subscription.topic_name} for > {STALE_INPUT_S:.0f} s")
        if self._bad_messages.last_time is not None and now - self._bad_messages.last_time < RECENT_PROBLEM_S:
            problems.append("bad image messages")
        if (loss := self._lost.recent_loss()) > LOST_FRAMES_WARN:
            problems.append(
                f"{loss:.0%} of the camera's frames lost before the node (QoS / network / CPU; see "
                "frames_lost_before_node)"
            )
        if self._describer.label.startswith("UNTRAINED"):
            problems.append("untrained model")
        if fleet and fleet["connection_state"] != "connected":
            problems.append(f"fleet map {fleet['connection_state']}: answering from the local map")
        if (utilisation := counters.utilisation) is not None and utilisation >= MAP_NEARLY_FULL:
            if counters.places >= counters.max_places:
                problems.append(
                    f"map full ({counters.places}/{counters.max_places} places, max_places): keyframes are "
                    "matched but no longer added"
                )
            else:
                full = f"{counters.places}/{counters.max_places}"
                problems.append(f"map at {utilisation:.0%} of max_places ({full})")
        if fleet.get("mapping_refused") == "true":
            problems.append("fleet map read-only for this role: mapping off, localisation only")
        if problems and level == DiagnosticStatus.OK:
            level = DiagnosticStatus.WARN
        message = "; ".join(problems) if problems else "ok"
        return messages.diagnostic_status(DIAGNOSTIC_NAME, "tscm_ros", level, message, values)

    def _publish_diagnostics(self) -> None:
        if not getattr(self, "_mapping_refused_said", False) and (refused := self._places.mapping_refused):
            self._mapping_refused_said = True  # one WARN; /diagnostics keeps saying it (mapping_refused)
            self.get_logger().warning(refused)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self.diagnostics_status()]
        self._diagnostics_publisher.publish(array)

    # ------------------------------------------------------------------ shutdown
    def finish(self) -> bool:
        """Stop the inference loop and save the map if configured; False when that save failed.

        Reports through :func:`~tscm_ros.ros.shutdown.log`, which prints to stderr once the context is gone,
        so the outcome of a shutdown save is always visible (and never a rosout error).
        """
        if not getattr(self, "_constructed", False):
            return True
        if self._finished:
            return self._shutdown_save_ok
        self._finished = True
        self._slot.close()
        if not self._saver.close(timeout=SAVE_SERVICE_TIMEOUT_S):  # a save in progress finishes first
            log(self, f"{NODE_NAME}: a save is still running at shutdown", "error")
        ok = True
        if self._config["save_on_shutdown"] and self._config["map_path"] and self._places.dirty:
            path = self._config["map_path"]
            try:
                count = self._places.save(path)
                log(self, f"{NODE_NAME}: saved {count} places to {path} (shutdown)")
            except Exception as error:
                ok = False
                log(self, f"{NODE_NAME}: saving the map to {path} failed (shutdown): {error}", "error")
        self._places.close()
        self._shutdown_save_ok = ok
        return ok

    def destroy_node(self) -> None:
        self.finish()
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    """Console script: init, build the node, spin; start-up errors print one line and exit 1, and so does a
    failed shutdown save."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Python's signal handling, not rclpy's: rclpy's handlers trigger the executors' guard conditions from a
    # C++ thread, which raced our shutdown (the executor is shut down, then the map saved) and hit a
    # destroyed guard condition: SIGSEGV before the shutdown save in about 1 of 3 SIGINTs. Here SIGINT and
    # SIGTERM raise KeyboardInterrupt on the main thread, and run_until_shutdown takes it from there.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        node = PlaceRecognitionNode()
    except (StartupError, rclpy.exceptions.ParameterException) as error:
        rclpy.logging.get_logger(NODE_NAME).error(str(error).replace("\n", " "))
        rclpy.try_shutdown()
        return 1
    try:
        executor = create_executor(os.environ.get(EXECUTOR_ENV, "") or DEFAULT_EXECUTOR)
    except ValueError as error:
        rclpy.logging.get_logger(NODE_NAME).error(str(error))
        shutdown_quietly([node])
        return 1
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, node.context), name="ros_executor", daemon=True)
    spinner.start()

    def work() -> bool:
        try:
            node.run_inference_loop()  # inference on the main thread (see run_inference_loop)
        finally:
            executor.shutdown()
            spinner.join(timeout=5.0)
        return node.finish()

    outcome = run_until_shutdown(work, nodes=[node])
    saved = outcome.result if outcome.result is not None else node.finish()
    return 0 if saved else 1


def create_executor(kind: str) -> Executor:
    """The executor that spins the node's callbacks in the background thread (``TSCM_EXECUTOR``).

    ``events`` (the default): rclpy's experimental EventsExecutor, one thread for every callback (none waits;
    ``~/save_map`` awaits its write as a coroutine). ``multi_threaded``: a MultiThreadedExecutor with one
    thread per callback group (:data:`EXECUTOR_THREADS`). benchmarks/soak.py ``--executor both`` compares
    the two. ValueError names the variable otherwise.
    """
    if kind == "multi_threaded":
        return MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    raise ValueError(f"{EXECUTOR_ENV}={kind!r}: expected one of {', '.join(EXECUTORS)}")


def _spin(executor: Executor, context: Any) -> None:
    with contextlib.suppress(ExternalShutdownException):
        if isinstance(executor, MultiThreadedExecutor):
            executor.spin()
            return
        # EventsExecutor (rclpy 9.1.2): spin() dispatched nothing here (no timer tick, no message, in the
        # main thread as in a background one) while a loop of spin_once(timeout_sec) dispatches everything
        while rclpy.ok(context=context):
            executor.spin_once(timeout_sec=EVENTS_SPIN_TIMEOUT_S)


if __name__ == "__main__":
    sys.exit(main())
