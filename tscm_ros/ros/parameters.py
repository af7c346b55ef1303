"""The place_recognition_node parameter table: names, defaults, descriptions, ranges and validation.

The node declares exactly these (plus ``use_sim_time``, which rclpy declares itself). The table is plain data
so tools and tests can read it without starting ROS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from tscm_ros.config_ranges import field_range
from tscm_ros.features import FeatureConfig
from tscm_ros.loop_closure import LoopClosureConfig
from tscm_ros.placemap import IndexSpec, IndexSpecError
from tscm_ros.recognition import RecognitionConfig
from tscm_ros.sequence import SequenceConfig
from tscm_ros.verification import VerifierConfig

Validator = Callable[[Any], "str | None"]

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
DETECTOR_DEFAULTS = LoopClosureConfig()
VERIFIER_DEFAULTS = VerifierConfig()
SEQUENCE_DEFAULTS = SequenceConfig()
FEATURE_DEFAULTS = FeatureConfig()


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default (which fixes its type), description and constraints."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()
    validator: Validator | None = None
    dynamic_typing: bool = False  # the value may change type (e.g. "auto" or a number)
    item_type: type | None = None  # element type of a list parameter (an empty default does not show it)

    @property
    def is_string_array(self) -> bool:
        """True for STRING_ARRAY parameters (declared with that type: [] alone would be a BYTE_ARRAY)."""
        return self.item_type is str

    def descriptor(self) -> ParameterDescriptor:
        constraints = []
        descriptor = ParameterDescriptor(
            description=self.description, read_only=self.read_only, dynamic_typing=self.dynamic_typing
        )
        if self.min_value is not None and self.max_value is not None:
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                descriptor.integer_range = [
                    IntegerRange(from_value=int(self.min_value), to_value=int(self.max_value), step=0)
                ]
            elif isinstance(self.default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(
                        from_value=float(self.min_value), to_value=float(self.max_value), step=0.0
                    )
                ]
            constraints.append(f"range [{self.min_value}, {self.max_value}]")
        if self.choices:
            constraints.append("one of: " + ", ".join(self.choices))
        if self.validator is not None and self.validator.__doc__:
            constraints.append(self.validator.__doc__.strip())
        descriptor.additional_constraints = "; ".join(constraints)
        return descriptor

    def validate(self, value: Any) -> str | None:
        """Return a clear error message for a bad value, None when the value is fine."""
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}"
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and self.min_value is not None
            and self.max_value is not None
            and not (math.isfinite(value) and self.min_value <= value <= self.max_value)
        ):
            return f"{self.name} must be in [{self.min_value}, {self.max_value}]; got {value!r}"
        if self.validator is not None:
            error = self.validator(value)
            if error is not None and self.name not in error:  # shared validators: name the parameter
                error = f"{self.name}: {error}"
            return error
        return None


def _device(value: str) -> str | None:
    """auto, cpu, cuda or cuda:N"""
    if not DEVICE_PATTERN.match(value):
        return f"device must be auto, cpu, cuda or cuda:N; got {value!r}"
    return None


def _covariance(value: Any) -> str | None:
    """six non-negative variances: x, y, z, roll, pitch, yaw"""
    values = list(value)
    if len(values) != 6 or not all(math.isfinite(v) and v >= 0.0 for v in values):
        return f"matched_pose_covariance must be 6 non-negative finite variances; got {values!r}"
    return None


def _index_spec(value: str) -> str | None:
    """a faiss index spec of tscm_ros.placemap.IndexSpec (e.g. flat | hnsw:M=32 | ivf:nlist=1024,nprobe=16)"""
    try:
        IndexSpec.parse(value)
    except (IndexSpecError, ValueError) as error:
        return f"index_spec {value!r} is invalid: {error}"
    return None


def _intrinsics(value: Any) -> str | None:
    """four finite values fx, fy, cx, cy >= 0 (all 0 = from camera_info)"""
    values = list(value)
    if len(values) != 4 or not all(math.isfinite(v) and v >= 0.0 for v in values):
        return f"camera_intrinsics must be 4 finite values fx, fy, cx, cy >= 0; got {values!r}"
    if any(values) and not (values[0] > 0 and values[1] > 0):
        return f"camera_intrinsics needs fx > 0 and fy > 0 (or all 0); got {values!r}"
    return None


def _threshold(value: Any) -> str | None:
    """auto, or a cosine in [-1, 1]"""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        return f"similarity_threshold must be auto or a number in [-1, 1]; got {value!r}"
    return None


def _string_list(value: Any) -> str | None:
    """a list of strings ([] = no filter)"""
    if value is None:  # not set: an empty YAML list ([]) reaches the node unset; it becomes []
        return None
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        return f"expected a list of strings; got {value!r}"
    return None


def _schema(value: str) -> str | None:
    """non-empty PostgreSQL schema name"""
    if not value.strip():
        return "map_schema must not be empty"
    return None


def _frame(value: str) -> str | None:
    """non-empty frame id"""
    if not value.strip():
        return "map_frame must not be empty"
    return None


PARAMETERS: tuple[ParameterSpec, ...] = (
    # model
    ParameterSpec(
        "model_path",
        "",
        "TSCM student model (our model directory / model.json, or a published .pth); '' = UNTRAINED "
        "student with random weights (for plumbing tests only: its matches are meaningless)",
        read_only=True,
    ),
    ParameterSpec(
        "backend",
        "torch",
        "inference backend (tensorrt: ONNX Runtime's TensorRT provider on NVIDIA GPUs / Jetson)",
        read_only=True,
        choices=("torch", "onnxruntime", "tensorrt"),
    ),
    ParameterSpec(
        "precision",
        "fp32",
        "fp32, or auto (from the CPU flags: int8 when model.int8.onnx exists and the CPU has VNNI, bf16 on "
        "AVX512-BF16), bf16, fp16 or int8; see tscm_ros/precision.py",
        read_only=True,
        choices=("fp32", "auto", "bf16", "fp16", "int8"),
    ),
    ParameterSpec(
        "device", "auto", "auto (cuda when available), cpu, cuda or cuda:N", True, validator=_device
    ),
    ParameterSpec("fp16", True, "half precision inference on CUDA (ignored on CPU)", read_only=True),
    ParameterSpec("num_threads", 0, "CPU inference threads (0 = library default)", True, 0, 256),
    ParameterSpec(
        "inference_nice",
        5,
        "niceness (0-19) of the inference thread and its worker pools; the executor threads keep the "
        "process's, so services, parameters and diagnostics go first on a busy CPU",
        True,
        0,
        19,
    ),
    # map
    ParameterSpec("map_path", "", "place map file/directory used by load_map, ~/save_map and autosave", True),
    ParameterSpec("load_map", False, "load map_path at start-up (must exist and match the model)", True),
    ParameterSpec(
        "autosave_period_s",
        0.0,
        "save the map atomically to map_path this often (0 = off)",
        False,
        0.0,
        86400.0,
    ),
    ParameterSpec(
        "index_spec",
        "flat",
        "faiss index of a new map (a loaded map keeps its own)",
        True,
        validator=_index_spec,
    ),
    ParameterSpec("save_on_shutdown", True, "save the map to map_path on a clean shutdown when it changed"),
    ParameterSpec(
        "max_places",
        0,
        "growth budget of the local map: at this many places keyframes are still matched but no longer "
        "added (/diagnostics WARN from 90 %); 0 = unlimited",
        True,
        0,
        1_000_000_000,
    ),
    ParameterSpec(
        "mode",
        "mapping",
        "mapping: keyframes are added to the map; localization: the map is only searched",
        choices=("mapping", "localization"),
    ),
    # fleet map (PostgreSQL + pgvector, docs/FLEET.md)
    ParameterSpec(
        "map_uri",
        "",
        "'' = the local map at map_path only; a postgresql:// or postgres:// URI or libpq conninfo "
        "(service=NAME) = the shared fleet map on that server, with map_path as this robot's local copy "
        "(outbox + fallback; opened or created, load_map not needed). No passwords here: use ~/.pgpass or "
        "the service file",
        read_only=True,
    ),
    ParameterSpec(
        "map_schema", "tscm", "schema of the fleet map on the server (map_uri)", True, validator=_schema
    ),
    ParameterSpec(
        "robot_id",
        "",
        "robot the places of this node belong to on a fleet map; '' = the node namespace without the "
        "leading slash (/robot_a -> robot_a), or the host name when the namespace is /",
        read_only=True,
    ),
    ParameterSpec(
        "session_id",
        "",
        "session the places of this run belong to on a fleet map; '' = a new one per start: the UTC start "
        "time (2024-06-01T12:00:00Z)",
        read_only=True,
    ),
    ParameterSpec(
        "query_robots",
        [],
        "fleet map: candidates only from places of these robots ([] = all robots)",
        validator=_string_list,
        item_type=str,
    ),
    ParameterSpec(
        "query_exclude_robots",
        [],
        "fleet map: never candidates from places of these robots",
        validator=_string_list,
        item_type=str,
    ),
    ParameterSpec(
        "query_sessions",
        [],
        "fleet map: candidates only from places of these sessions ([] = all sessions)",
        validator=_string_list,
        item_type=str,
    ),
    ParameterSpec(
        "query_exclude_sessions",
        [],
        "fleet map: never candidates from places of these sessions",
        validator=_string_list,
        item_type=str,
    ),
    ParameterSpec(
        "map_search_mode",
        "auto",
        "fleet map server search: reduced = HNSW on the PCA-reduced vectors + exact re-ranking on the full "
        "descriptor; full = HNSW on the full descriptor; exact = sequential scan (slow, ground truth); "
        "auto = reduced when the map has a PCA projection and its index, else full",
        read_only=True,
        choices=("auto", "reduced", "full", "exact"),
    ),
    ParameterSpec(
        "map_ef_search",
        64,
        "fleet map: HNSW candidate list size (hnsw.ef_search) of an unfiltered query; higher = better "
        "recall, slower. Filtered queries scale it by 1 / (share of the map the filter keeps), up to "
        "map_max_ef_search",
        True,
        1,
        1000,
    ),
    ParameterSpec(
        "map_rerank_candidates",
        64,
        "fleet map, reduced search: places fetched from the PCA-reduced HNSW index and re-ranked exactly on "
        "the full descriptor (the HNSW walk uses at least this many candidates); a query_* filter keeping a "
        "share s of the map re-ranks this / sqrt(s), up to map_max_ef_search",
        True,
        1,
        1000,
    ),
    ParameterSpec(
        "map_max_ef_search",
        1000,
        "fleet map: largest hnsw.ef_search a filtered query may use (bounds its latency; <= map_ef_search "
        "turns the scaling by the filter's share off)",
        True,
        1,
        1000,
    ),
    # keyframe policy
    ParameterSpec(
        "min_interval_s",
        DETECTOR_DEFAULTS.min_interval_s,
        "minimum time between keyframes (header stamps), seconds",
        False,
        *field_range(LoopClosureConfig, "min_interval_s"),
    ),
    ParameterSpec(
        "min_descriptor_change",
        DETECTOR_DEFAULTS.min_descriptor_change,
        "minimum 1 - cosine similarity to the previous keyframe for a new keyframe",
        False,
        *field_range(LoopClosureConfig, "min_descriptor_change"),
    ),
    ParameterSpec(
        "min_travel_m",
        DETECTOR_DEFAULTS.min_travel_m,
        "minimum travel since the previous keyframe (needs odom), metres",
        False,
        *field_range(LoopClosureConfig, "min_travel_m"),
    ),
    # candidate search
    ParameterSpec(
        "exclusion_window_s",
        DETECTOR_DEFAULTS.exclusion_window_s,
        "places whose stamps are closer than this to the query are not candidates",
        False,
        *field_range(LoopClosureConfig, "exclusion_window_s"),
    ),
    ParameterSpec(
        "exclusion_travel_m",
        DETECTOR_DEFAULTS.exclusion_travel_m,
        "with odometry: places of this run added less than this travel ago are not candidates (metres)",
        False,
        *field_range(LoopClosureConfig, "exclusion_travel_m"),
    ),
    ParameterSpec(
        "exclusion_keyframes",
        DETECTOR_DEFAULTS.exclusion_keyframes,
        "the most recent N keyframes are not candidates",
        False,
        *field_range(LoopClosureConfig, "exclusion_keyframes"),
    ),
    ParameterSpec(
        "top_k",
        DETECTOR_DEFAULTS.top_k,
        "maximum candidates per keyframe",
        False,
        *field_range(LoopClosureConfig, "top_k"),
    ),
    ParameterSpec(
        "similarity_threshold",
        DETECTOR_DEFAULTS.similarity_threshold,
        "minimum cosine similarity of a candidate, or auto: no filter when verification is on (it decides), "
        "else the 95th percentile of the first 50 keyframes' top-1 similarities (no ground truth needed)",
        validator=_threshold,
        dynamic_typing=True,
    ),
    ParameterSpec(
        "consistency_n",
        DETECTOR_DEFAULTS.consistency_n,
        "a candidate is reported after this many consecutive keyframes match consistently",
        False,
        *field_range(LoopClosureConfig, "consistency_n"),
    ),
    ParameterSpec(
        "consistency_tolerance_keyframes",
        DETECTOR_DEFAULTS.consistency_tolerance_keyframes,
        "candidates of consecutive keyframes agree when their matches are within N keyframe indices",
        False,
        *field_range(LoopClosureConfig, "consistency_tolerance_keyframes"),
    ),
    ParameterSpec(
        "consistency_tolerance_s",
        DETECTOR_DEFAULTS.consistency_tolerance_s,
        "... or within this many seconds of each other (0 = off)",
        False,
        *field_range(LoopClosureConfig, "consistency_tolerance_s"),
    ),
    ParameterSpec(
        "nms_window_keyframes",
        DETECTOR_DEFAULTS.nms_window_keyframes,
        "non-maximum suppression: drop a candidate within N keyframe indices of a better one (0 = off)",
        False,
        *field_range(LoopClosureConfig, "nms_window_keyframes"),
    ),
    ParameterSpec(
        "nms_window_s",
        DETECTOR_DEFAULTS.nms_window_s,
        "... or within this many seconds of a better one (0 = off)",
        False,
        *field_range(LoopClosureConfig, "nms_window_s"),
    ),
    # geometric verification and sequence matching
    ParameterSpec(
        "verify",
        True,
        "verify candidates geometrically (local features + MAGSAC++); ~/loop_closures and the LIO-SAM "
        "topic then carry verified closures only",
    ),
    ParameterSpec(
        "verify_top_k",
        5,
        "verify the first N candidates of a keyframe (there are at most top_k)",
        False,
        *field_range(RecognitionConfig, "verify_top_k"),
    ),
    ParameterSpec(
        "feature_method", "sift", "local features: sift (RootSIFT) or orb (faster)", choices=("sift", "orb")
    ),
    ParameterSpec(
        "max_keypoints",
        FEATURE_DEFAULTS.max_keypoints,
        "maximum local features per keyframe",
        False,
        *field_range(FeatureConfig, "max_keypoints"),
    ),
    ParameterSpec(
        "feature_max_side",
        FEATURE_DEFAULTS.max_image_side,
        "working resolution of local features: longer image side in pixels (0 = native)",
        False,
        *field_range(FeatureConfig, "max_image_side"),
    ),
    ParameterSpec(
        "min_inliers",
        VERIFIER_DEFAULTS.min_inliers,
        "inliers needed to accept a candidate",
        False,
        *field_range(VerifierConfig, "min_inliers"),
    ),
    ParameterSpec(
        "min_inlier_ratio",
        VERIFIER_DEFAULTS.min_inlier_ratio,
        "inliers / mutual matches needed to accept a candidate",
        False,
        *field_range(VerifierConfig, "min_inlier_ratio"),
    ),
    ParameterSpec(
        "camera_intrinsics",
        [0.0, 0.0, 0.0, 0.0],
        "fx, fy, cx, cy of the image in pixels; all 0 = take them from the camera_info topic (essential "
        "matrix), none known = fundamental matrix (no relative pose)",
        validator=_intrinsics,
    ),
    ParameterSpec(
        "depth_max_offset_s",
        0.02,
        "a depth image (topic 'depth', 16UC1 mm or 32FC1 m, aligned to the image) is used when its stamp is "
        "within this time of the image stamp",
        False,
        0.0,
        1.0,
    ),
    ParameterSpec(
        "sequence_length",
        SEQUENCE_DEFAULTS.length,
        "match sequences of N keyframes (SeqSLAM-style) instead of single frames (0 = off)",
        False,
        *field_range(SequenceConfig, "length"),
    ),
    ParameterSpec(
        "sequence_confirm_inliers",
        RecognitionConfig.sequence_confirm_inliers,
        "with sequence matching and verification: inliers that confirm the best full sequence's match "
        "(other candidates need min_inliers)",
        False,
        *field_range(RecognitionConfig, "sequence_confirm_inliers"),
    ),
    ParameterSpec(
        "sequence_min_speed",
        SEQUENCE_DEFAULTS.min_speed,
        "slowest relative speed (map keyframes per query keyframe) a sequence may have",
        False,
        *field_range(SequenceConfig, "min_speed"),
    ),
    ParameterSpec(
        "sequence_max_speed",
        SEQUENCE_DEFAULTS.max_speed,
        "fastest relative speed (map keyframes per query keyframe) a sequence may have",
        False,
        *field_range(SequenceConfig, "max_speed"),
    ),
    # input
    ParameterSpec(
        "image_transport",
        "raw",
        "raw: subscribe 'image' (sensor_msgs/Image); compressed: 'image/compressed' (CompressedImage)",
        read_only=True,
        choices=("raw", "compressed"),
    ),
    ParameterSpec(
        "reliable_qos", False, "reliable image subscription (default: sensor-data best effort)", True
    ),
    ParameterSpec(
        "max_image_pixels",
        16_777_216,
        "images with more pixels are rejected (bad message)",
        False,
        1,
        1 << 30,
    ),
    ParameterSpec(
        "pose_max_age_s",
        0.5,
        "odom pose used for an image only when within this time of the image stamp",
        False,
        0.0,
        60.0,
    ),
    # outputs
    ParameterSpec("publish_lio_sam", True, "publish [t_query, t_match] on lio_loop/loop_closure_detection"),
    ParameterSpec("publish_markers", True, "publish loop edges on ~/markers (when poses are known)"),
    ParameterSpec("publish_descriptor", False, "publish each keyframe descriptor on ~/descriptor"),
    ParameterSpec("map_frame", "map", "frame of poses, ~/matched_pose and ~/markers", validator=_frame),
    ParameterSpec(
        "matched_pose_covariance",
        [0.25, 0.25, 0.25, 0.07, 0.07, 0.07],
        "variances (x, y, z, roll, pitch, yaw) of ~/matched_pose",
        validator=_covariance,
    ),
)

PARAMETERS_BY_NAME: Mapping[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}

# Declared by rclpy itself on every node; valid in parameter files too.
AUTOMATIC_PARAMETERS: tuple[str, ...] = ("use_sim_time",)


def parameter_names() -> list[str]:
    """Every parameter the node accepts (its own + rclpy's automatic ones)."""
    return [spec.name for spec in PARAMETERS] + list(AUTOMATIC_PARAMETERS)


def validate(name: str, value: Any) -> str | None:
    """Clear error message for a bad value of a known parameter, None when fine (unknown names pass)."""
    spec = PARAMETERS_BY_NAME.get(name)
    return spec.validate(value) if spec is not None else None


# ------------------------------------------------------------------ unknown names and type errors
# Appended after the table (not inside it) so that additions to PARAMETERS above merge cleanly.
STRICT_PARAMETERS = ParameterSpec(
    "strict_parameters",
    False,
    "parameter names given for this node (-p, params file) that it does not declare (typos) stop it at "
    "start-up instead of a warning",
    read_only=True,
)
PARAMETERS = (*PARAMETERS, STRICT_PARAMETERS)
PARAMETERS_BY_NAME = {spec.name: spec for spec in PARAMETERS}

_TYPE_WORDS = {
    "BOOL": "a bool (true/false)",
    "INTEGER": "an integer",
    "DOUBLE": "a floating-point number",
    "STRING": "a string",
    "BYTE_ARRAY": "a byte array",
    "BOOL_ARRAY": "a list of bools",
    "INTEGER_ARRAY": "a list of integers",
    "DOUBLE_ARRAY": "a list of floating-point numbers",
    "STRING_ARRAY": "a list of strings",
    "NOT_SET": "no value",
}


def _type_name(kind: Any) -> str:
    """'INTEGER' for Parameter.Type.INTEGER, ParameterType.PARAMETER_INTEGER (2), 'INTEGER' / 'integer', or an
    example value of the type (e.g. the spec's default)."""
    from rclpy.parameter import Parameter

    if isinstance(kind, Parameter.Type):
        return kind.name
    if isinstance(kind, int) and not isinstance(kind, bool):
        return Parameter.Type(kind).name
    if isinstance(kind, str) and kind.upper() in _TYPE_WORDS:
        return kind.upper()
    return _value_type_name(kind)


def _value_type_name(value: Any) -> str:
    from rclpy.parameter import Parameter

    try:
        return Parameter.Type.from_parameter_value(value).name
    except TypeError:
        return type(value).__name__


def type_error_message(name: str, expected_type: Any, value: Any) -> str:
    """A type error that names the parameter and both types (rclpy says "expected '2' got '4'").

    ``expected_type``: a ``Parameter.Type``, a ``ParameterType`` constant, a type name or an example value
    (such as the spec's default). ``value``: the rejected value or ``rclpy.parameter.Parameter``.
    """
    from rclpy.parameter import Parameter

    if isinstance(value, Parameter):
        given, value = value.type_.name, value.value
    else:
        given = _value_type_name(value)
    expected = _type_name(expected_type)
    hint = ""
    if expected == "DOUBLE" and given == "INTEGER":
        hint = f" (write {value}.0)"
    elif expected == "DOUBLE_ARRAY" and given == "INTEGER_ARRAY":
        hint = " (write every element with a decimal point, e.g. 1.0)"
    return (
        f"parameter '{name}' must be {_TYPE_WORDS.get(expected, expected)} ({expected}); "
        f"got {value!r}, {_TYPE_WORDS.get(given, given)} ({given}){hint}"
    )


def parameter_type_error(node: Any, parameter: Any) -> str | None:
    """:func:`type_error_message` when ``parameter`` (rclpy Parameter) does not have the type ``node``
    declared it with; None when it does, or when it is undeclared / dynamically typed / being unset."""
    from rclpy.parameter import Parameter

    if parameter.type_ == Parameter.Type.NOT_SET or not node.has_parameter(parameter.name):
        return None
    descriptor = node.describe_parameter(parameter.name)
    if descriptor.dynamic_typing or descriptor.type in (0, parameter.type_.value):
        return None
    return type_error_message(parameter.name, descriptor.type, parameter)


def unknown_overrides(node: Any) -> list[str]:
    """Parameter names given for ``node`` (``-p``, ``--params-file`` sections for its name or ``/**``,
    ``parameter_overrides=``) that it has not declared: typos, or parameters of another node.

    Call after every parameter is declared. rclpy keeps the overrides in ``Node._parameter_overrides``
    (it has no public accessor); rclpy itself only ever applies an override when the name is declared.
    """
    overrides = getattr(node, "_parameter_overrides", None) or {}
    return sorted(name for name in overrides if not node.has_parameter(name))


def unknown_parameters_message(names: list[str]) -> str:
    """One line for :func:`unknown_overrides`'s result, with the nearest declared names as suggestions."""
    import difflib

    known = parameter_names()
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    plural = "s" if len(names) > 1 else ""
    return f"unknown parameter{plural} (not declared by this node): " + ", ".join(parts)
