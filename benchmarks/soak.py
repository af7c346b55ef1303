"""Soak test of place_recognition_node: 640x480 at 30 Hz with odometry and a service storm, for minutes.

Starts the node through its console entry (``place_recognition_node``) with the shipped loopback Fast DDS
profile, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a private domain, on a map of ``--preload-places``
synthetic places (built with the PlaceMap API and saved, then loaded by the node, which autosaves to it).
Publishes demo-scene frames (best-effort sensor QoS) and ``nav_msgs/Odometry`` with the same stamps, moving
at ``--speed`` m/s around the scene's looping street, so the keyframe travel gate works as on a robot and
later laps revisit earlier places. In parallel a service storm, from a process of its own (a separate
client, as on a robot; in this process its answers queued behind the image publisher), calls
``~/save_map``, ``~/set_mapping`` (off/on), ``set_parameters`` (``min_inliers`` 25 <-> 26),
``get_parameters`` and, with ``--reset-map``, ``~/reset_map``, and times every answer; ``/diagnostics`` gaps
are recorded too.

Measured (printed as markdown tables):

* per minute: node RSS (/proc/PID/status VmRSS), node CPU seconds (/proc/PID/stat utime+stime), map size,
  keyframe outputs, end-to-end latency p50/p95/p99 (wall-clock publish time of the image -> arrival of the
  ``~/descriptor`` message with its stamp; one per keyframe, as in benchmarks/ros_latency.py), stalls;
* stalls: frames that held the node's inference loop for more than 1 s (``frames_over_1s`` of /diagnostics,
  the node's own count: a blocked lock, a slow save or GC included), and per minute the longest frame
  (``frame_time_max_ms``); gaps > 1 s between consecutive keyframe outputs are printed too, but they include
  the keyframe policy's own gaps (``min_travel_m``, ``min_descriptor_change``), so they are not stalls;
* service latency p50/p99/max per service; /diagnostics inter-arrival max;
* processed Hz (``frames_processed`` of /diagnostics: frames taken from the slot, the interval gate's skips
  included), keyframe Hz, the node's own inference p50 and stage p50s, and the goal ratio
  ``processed_Hz / (0.6 / inference_s)`` (issue #10: >= 1);
* RSS growth per place: the least-squares slope of the node's RSS against the map size over the samples
  after the first minute (start-up excluded; a fit, because RSS moves +-40 MiB with transient buffers),
  the same slope for each part (RssAnon, RssFile, RssShmem), the plain end-to-end ratio, and the slope of
  the per-minute RSS floor (each minute's lowest sample): the growth that stays once the worker threads'
  transient buffers are left out, after minute 1 and over the second half (once bounded buffers, such as
  the closure history, DDS segments and holes in the heap, have filled);
* the autosave cost at ``--preload-places`` places with 100 new places (incremental ``PlaceMap.save``,
  measured in this process before the node starts; goal < 50 ms at 30k).

``--executor both`` runs the whole soak once with each executor (``TSCM_EXECUTOR``: multi_threaded, events)
and prints a comparison (CPU s per minute, stalls, latency, service p99).

    .venv/bin/python benchmarks/soak.py --minutes 30                       # the issue #10 soak
    .venv/bin/python benchmarks/soak.py --minutes 10 --executor both       # executor comparison
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))  # valid ids: 0-101

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from tscm_ros.ros.messages import diagnostic_values, ns_to_stamp, rgb_image_msg, stamp_to_ns  # noqa: E402
from tscm_ros.ros.place_recognition_node import DEFAULT_EXECUTOR, EXECUTORS  # noqa: E402
from tscm_ros.ros.testing import RosProbe, best_effort_qos, cpu_seconds, reliable_qos, ros_arguments  # noqa: E402

NODE = "/place_recognition_node"
WIDTH, HEIGHT = 640, 480
STALL_S = 1.0
SERVICE_TIMEOUT_S = 30.0
SAMPLE_PERIOD_S = 1.0


# ----------------------------------------------------------------------------------------- helpers


RSS_PARTS = ("RssAnon", "RssFile", "RssShmem")  # VmRSS = their sum (/proc/PID/status)


def rss_mb(pid: int) -> tuple[float, ...]:
    """VmRSS and its parts (RSS_PARTS) of a process from /proc/PID/status (MiB)."""
    values = dict.fromkeys(("VmRSS", *RSS_PARTS), float("nan"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in values:
            values[key] = int(value.split()[0]) / 1024.0
    return tuple(values.values())


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> list[float]:
    if not values:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, np.float64), qs)]


def table(columns: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def node_command() -> list[str]:
    """The node's console entry next to this interpreter (the venv's), else ``python -m``."""
    script = Path(sys.executable).parent / "place_recognition_node"
    if script.is_file():
        return [sys.executable, str(script)]
    found = shutil.which("place_recognition_node")
    if found:
        return [found]
    return [sys.executable, "-m", "tscm_ros.ros.place_recognition_node"]


# ---------------------------------------------------------------------------------------- the map


def build_map(directory: Path, places: int, dim: int, fingerprint: str, seed: int = 0) -> None:
    """A map of ``places`` random unit descriptors stamped long ago (so they are candidates like an old
    session's), saved in full at ``directory``."""
    from tscm_ros.placemap import PlaceMap, PlaceMeta

    rng = np.random.default_rng(seed)
    place_map = PlaceMap.create(dim, "flat", fingerprint)
    base_ns = 1_600_000_000 * 1_000_000_000
    chunk = 5000
    for start in range(0, places, chunk):
        n = min(chunk, places - start)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        metas = [PlaceMeta(stamp_ns=base_ns + (start + i) * 100_000_000, frame_id="camera") for i in range(n)]
        place_map.add(vectors, metas)
    place_map.save(directory, full=True)
    place_map.close()


def autosave_cost(directory: Path, dim: int, fingerprint: str, added: int = 100, repeats: int = 5) -> dict:
    """Incremental save of a copy of the map at ``directory`` after adding ``added`` places, ``repeats``
    times (ms); the map is loaded from (and saved to) a scratch copy."""
    from tscm_ros.placemap import PlaceMap, PlaceMeta

    scratch = Path(tempfile.mkdtemp(prefix="soak_autosave_"))
    try:
        shutil.copytree(directory, scratch / "map", symlinks=True)
        place_map = PlaceMap.load(scratch / "map", dim=dim, model_fingerprint=fingerprint)
        places = len(place_map)
        rng = np.random.default_rng(1)
        times = []
        for r in range(repeats):
            vectors = rng.standard_normal((added, dim)).astype(np.float32)
            metas = [PlaceMeta(stamp_ns=2_000_000_000_000_000_000 + r * added + i) for i in range(added)]
            place_map.add(vectors, metas)
            started = time.perf_counter()
            place_map.save()
            times.append((time.perf_counter() - started) * 1000.0)
        place_map.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"places": places, "added": added, "ms": times}


# --------------------------------------------------------------------------------------- the route


@dataclass
class Route:
    """Demo-scene frames of two laps (the second shifted, noisy, darker) and the street loop."""

    messages: list[list[Image]]  # [lap][step]
    world: object
    length_m: float
    intrinsics: tuple[float, float, float, float]

    @classmethod
    def build(cls, frames_per_lap: int) -> Route:
        from tscm_ros.demo.scene import SceneConfig, build_world, generate_frames, scene_intrinsics

        scene = SceneConfig(width=WIDTH, height=HEIGHT, frames_per_lap=frames_per_lap, laps=2)
        world = build_world(scene)
        laps: list[list[Image]] = [[], []]
        for frame in generate_frames(scene, world):
            laps[frame.lap].append(make_image(frame.rgb))
        k = scene_intrinsics(scene)
        return cls(laps, world, float(world.route_length), (k.fx, k.fy, k.cx, k.cy))

    def at(self, travelled_m: float) -> tuple[Image, tuple[float, float], float]:
        """(image, (x, y), yaw) after ``travelled_m`` metres along the loop (laps alternate renderings)."""
        lap = int(travelled_m // self.length_m) % 2
        s = travelled_m % self.length_m
        steps = len(self.messages[lap])
        msg = self.messages[lap][int(s / self.length_m * steps) % steps]
        centre, heading = self.world.route_pose(s)
        return msg, (float(centre[0]), float(centre[1])), float(heading)


def make_image(rgb: np.ndarray) -> Image:
    return rgb_image_msg(Header(frame_id="camera"), rgb)


def odometry(stamp_ns: int, xy: tuple[float, float], yaw: float) -> Odometry:
    msg = Odometry()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = "odom"
    msg.child_frame_id = "base_link"
    msg.pose.pose.position.x, msg.pose.pose.position.y = xy
    msg.pose.pose.orientation.z = math.sin(yaw / 2)
    msg.pose.pose.orientation.w = math.cos(yaw / 2)
    return msg


# ------------------------------------------------------------------------------------------ a run


@dataclass
class RunData:
    executor: str
    published: dict[int, float] = field(default_factory=dict)  # stamp ns -> wall publish time
    publish_times: list[float] = field(default_factory=list)
    # (wall, rss MiB, cpu s, RSS_PARTS MiB)
    samples: list[tuple[float, float, float, tuple[float, ...]]] = field(default_factory=list)
    services: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> (wall, ms)
    failures: dict[str, int] = field(default_factory=dict)
    diagnostics: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    outputs: list[tuple[float, int]] = field(default_factory=list)  # (receive wall, stamp ns)
    start: float = 0.0
    end: float = 0.0
    node_log: str = ""


class Storm:
    """The service storm: one call at a time, ``pause_s`` apart, each timed."""

    def __init__(self, probe: RosProbe, data: RunData, pause_s: float, reset_every: int) -> None:
        node = probe.node
        self._clients = {
            "save_map": (node.create_client(Trigger, f"{NODE}/save_map"), Trigger.Request),
            "reset_map": (node.create_client(Trigger, f"{NODE}/reset_map"), Trigger.Request),
            "set_mapping": (node.create_client(SetBool, f"{NODE}/set_mapping"), SetBool.Request),
        }
        self._parameters = AsyncParameterClient(node, NODE)
        self._data = data
        self._pause_s = pause_s
        self._reset_every = reset_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storm", daemon=True)

    def wait_ready(self, timeout: float) -> bool:
        ok = all(client.wait_for_service(timeout_sec=timeout) for client, _ in self._clients.values())
        return ok and self._parameters.wait_for_services(timeout_sec=timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SERVICE_TIMEOUT_S + 5)

    def _timed(self, name: str, future) -> None:
        started = time.monotonic()
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        ok = done.wait(SERVICE_TIMEOUT_S)
        elapsed_ms = (time.monotonic() - started) * 1000.0
        self._data.services.setdefault(name, []).append((time.time(), elapsed_ms))
        if not ok or future.exception() is not None:
            self._data.failures[name] = self._data.failures.get(name, 0) + 1

    def _call(self, name: str, **fields) -> None:
        client, request_type = self._clients[name]
        self._timed(name, client.call_async(request_type(**fields)))

    def _run(self) -> None:
        cycle = 0
        value = 25
        steps = [
            lambda: self._call("save_map"),
            lambda: self._call("set_mapping", data=False),
            lambda: self._timed("get_parameters", self._parameters.get_parameters(["mode", "min_inliers"])),
            lambda: self._call("set_mapping", data=True),
            lambda: self._timed(
                "set_parameters", self._parameters.set_parameters([Parameter("min_inliers", value=value)])
            ),
        ]
        while not self._stop.is_set():
            cycle += 1
            value = 26 if value == 25 else 25
            for step in steps:
                if self._stop.is_set():
                    return
                step()
                self._stop.wait(self._pause_s)
            if self._reset_every and cycle % self._reset_every == 0:
                self._call("reset_map")


class StormProcess:
    """Starts :class:`Storm` in a spawned process; :meth:`stop` collects its timings into ``data``."""

    def __init__(self, pause_s: float, reset_every: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, self._go, self._stop = context.Event(), context.Event(), context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=_run_storm,
            args=(pause_s, reset_every, self._ready, self._go, self._stop, self._results),
            name="storm",
            daemon=True,
        )
        self._process.start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def start(self) -> None:
        self._go.set()

    def stop(self, data: RunData) -> None:
        self._stop.set()
        self._go.set()  # a storm that never started still reports (nothing)
        try:
            outcome = self._results.get(timeout=SERVICE_TIMEOUT_S + 30)
        except queue.Empty:
            outcome = None
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        if outcome is not None:
            data.services, data.failures = outcome


def _run_storm(pause_s: float, reset_every: int, ready, go, stop, results) -> None:
    data = RunData("storm")
    with RosProbe("soak_storm") as probe:
        storm = Storm(probe, data, pause_s, reset_every)
        if not storm.wait_ready(30.0):
            results.put(None)
            return
        ready.set()
        go.wait()
        if not stop.is_set():
            storm.start()
            stop.wait()
            storm.stop()
    results.put((data.services, data.failures))


def sampler(pid: int, data: RunData, stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_PERIOD_S):
        try:
            rss, *parts = rss_mb(pid)
            data.samples.append((time.time(), rss, cpu_seconds(pid), tuple(parts)))
        except (OSError, ValueError):
            return


def run_once(args: argparse.Namespace, executor: str, map_dir: Path | None, route: Route) -> RunData:
    data = RunData(executor)
    work = Path(tempfile.mkdtemp(prefix="soak_run_"))
    parameters: dict[str, object] = {
        "publish_descriptor": True,
        "camera_intrinsics": list(route.intrinsics),
        "feature_method": args.feature_method,
        "verify": args.verify,
        "map_path": str(work / "map"),
        "autosave_period_s": args.autosave_period_s,
        "model_path": args.model_path,
    }
    if args.min_interval_s is not None:
        parameters["min_interval_s"] = args.min_interval_s
    if map_dir is not None:
        shutil.copytree(map_dir, work / "map", symlinks=True)
        parameters["load_map"] = True
    environment = dict(os.environ, TSCM_EXECUTOR=executor)
    log_path = work / "node.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*node_command(), *ros_arguments(parameters)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    try:
        with RosProbe(f"soak_probe_{executor}") as probe:
            _drive(args, probe, process, data, route, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(2)  # SIGINT: clean shutdown (saves the map)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        data.node_log = log_path.read_text(errors="replace")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return data


def _wait_for_log(process: subprocess.Popen, log_path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _drive(
    args: argparse.Namespace,
    probe: RosProbe,
    process: subprocess.Popen,
    data: RunData,
    route: Route,
    log_path: Path,
) -> None:
    if not _wait_for_log(process, log_path, "ready:", 600):
        raise RuntimeError(f"node did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
    descriptors = probe.subscribe(PointCloud2, f"{NODE}/descriptor", reliable_qos(100))
    diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(10))
    images = probe.publisher(Image, "/image", best_effort_qos(1))
    odom = probe.publisher(Odometry, "/odom", best_effort_qos(10))
    if not probe.wait_for_subscribers(images, 1, 30.0):
        raise RuntimeError("the node did not subscribe to /image")
    storm = StormProcess(args.storm_pause_s, args.reset_every)
    if not storm.wait_ready(60.0):
        storm.stop(data)
        raise RuntimeError("the node's services are not available")
    time.sleep(1.0)  # let the descriptor subscription match too
    stop = threading.Event()
    sampling = threading.Thread(target=sampler, args=(process.pid, data, stop), daemon=True)
    sampling.start()
    if not args.no_storm:
        storm.start()
    period = 1.0 / args.rate
    duration = args.minutes * 60.0
    data.start = time.time()
    started = time.monotonic()
    next_time = started
    index = 0
    try:
        while (elapsed := time.monotonic() - started) < duration:
            if process.poll() is not None:
                raise RuntimeError(f"the node exited (code {process.returncode})")
            msg, xy, yaw = route.at(args.speed * elapsed)
            stamp_ns = time.time_ns()
            odom.publish(odometry(stamp_ns, xy, yaw))
            msg.header.stamp = ns_to_stamp(stamp_ns)
            now = time.time()
            data.published[stamp_ns] = now
            data.publish_times.append(now)
            images.publish(msg)
            index += 1
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
        data.end = time.time()
        time.sleep(2.0)  # the last frame in flight
    finally:
        storm.stop(data)
        stop.set()
        sampling.join(timeout=5)
    data.outputs = [(when, stamp_to_ns(m.header.stamp)) for when, m in descriptors.items]
    data.diagnostics = [(when, diagnostic_values(m.status[0])) for when, m in diagnostics.items if m.status]


# ---------------------------------------------------------------------------------------- reporting


def _diag_at(data: RunData, wall: float) -> dict[str, str]:
    """The last /diagnostics values received at or before ``wall``."""
    best: dict[str, str] = {}
    for when, values in data.diagnostics:
        if when <= wall:
            best = values
    return best


def _number(values: dict[str, str], key: str) -> float:
    try:
        return float(values.get(key, "nan"))
    except ValueError:
        return float("nan")


def _finite_max(values) -> float:
    """The largest non-NaN value (NaN: none); a NaN frame time means no frame in that window, and max()
    would return a leading NaN."""
    return max((value for value in values if value == value), default=float("nan"))


def _minute_rows(data: RunData, latencies: list[tuple[float, float]]) -> list[dict]:
    """One row per minute: RSS, CPU, map size, outputs, latency percentiles, stalls, frames published."""
    minutes = max(1, math.ceil((data.end - data.start - 1.0) / 60.0))  # a last second: no row
    rows = []
    for m in range(minutes):
        t0, t1 = data.start + 60 * m, min(data.start + 60 * (m + 1), data.end)
        lat = [ms for t, ms in latencies if t0 <= t < t1]
        in_minute = [s for s in data.samples if t0 <= s[0] <= t1]
        before = [s for s in data.samples if s[0] <= t0]
        cpu0 = before[-1][2] if before else (in_minute[0][2] if in_minute else float("nan"))
        cpu1 = in_minute[-1][2] if in_minute else float("nan")
        span = (in_minute[-1][0] - (before[-1][0] if before else in_minute[0][0])) if in_minute else 0.0
        diag = _diag_at(data, t1)
        rows.append(
            {
                "minute": m + 1,
                "rss_mb": in_minute[-1][1] if in_minute else float("nan"),
                "rss_floor_mb": min((s[1] for s in in_minute), default=float("nan")),
                "cpu_s_per_min": (cpu1 - cpu0) * 60.0 / span if span > 0 else float("nan"),
                "map_size": _number(diag, "map_size"),
                "outputs": len(lat),
                "p50": percentiles(lat)[0],
                "p95": percentiles(lat)[1],
                "p99": percentiles(lat)[2],
                "stalls": _number(_diag_at(data, t1), "frames_over_1s")
                - _number(_diag_at(data, t0), "frames_over_1s"),
                "frame_max_ms": _finite_max(
                    _number(v, "frame_time_max_ms") for when, v in data.diagnostics if t0 <= when < t1
                ),
                "published": sum(1 for t in data.publish_times if t0 <= t < t1),
            }
        )
    return rows


def _rss_slope_kb_per_place(data: RunData, part: int | None = None) -> float:
    """Least-squares slope of RSS (KiB) against the map size, over the samples after the first minute;
    ``part``: of that RSS_PARTS entry instead."""
    return _kb_per_place(
        (_number(_diag_at(data, when), "map_size"), rss if part is None else parts[part])
        for when, rss, _cpu, parts in data.samples
        if when >= data.start + 60.0
    )


def _rss_floor_slope_kb_per_place(rows: list[dict], first: int = 1) -> float:
    """Least-squares slope of each minute's lowest RSS (KiB) against the map size at its end, from row
    ``first`` on (default: after the first minute): the growth that stays, without the transient buffers
    (+-20-40 MiB) of the worker threads."""
    return _kb_per_place((r["map_size"], r["rss_floor_mb"]) for r in rows[first:])


def _kb_per_place(points) -> float:
    """Least-squares slope (KiB per place) of (map size, RSS MiB) points; NaN points are left out, and
    fewer than 3 points or one map size give NaN."""
    kept = [(places, rss * 1024.0) for places, rss in points if places == places and rss == rss]
    if len(kept) < 3 or max(p for p, _ in kept) <= min(p for p, _ in kept):
        return float("nan")
    places, rss = np.array(kept).T
    return float(np.polyfit(places, rss, 1)[0])


def _rss_kb_per_place(data: RunData, last_diag: dict) -> float:
    """RSS growth per added place, from the end of the first minute (start-up excluded) to the end."""
    baseline = next(
        (s for s in data.samples if s[0] >= data.start + 60.0), data.samples[0] if data.samples else None
    )
    growth = float("nan")
    if baseline is not None and data.samples:
        places0 = _number(_diag_at(data, baseline[0]), "map_size")
        places1 = _number(last_diag, "map_size")
        if places1 > places0:
            growth = (data.samples[-1][1] - baseline[1]) * 1024.0 / (places1 - places0)
    return growth


def summarise(data: RunData) -> dict:
    latencies = [
        (data.published[s], (when - data.published[s]) * 1000.0)
        for when, s in data.outputs
        if s in data.published
    ]
    arrivals = sorted(when for when, s in data.outputs if s in data.published)
    gaps = [(b - a, a) for a, b in zip(arrivals, arrivals[1:], strict=False) if a < data.end]
    if arrivals:
        gaps.insert(0, (arrivals[0] - data.start, data.start))
    output_gaps = [(gap, when) for gap, when in gaps if gap > STALL_S]
    rows = _minute_rows(data, latencies)
    first_diag, last_diag = _diag_at(data, data.start + 0.5), _diag_at(data, data.end + 1.5)
    elapsed = data.end - data.start
    processed = _number(last_diag, "frames_processed") - _number(first_diag, "frames_processed")
    keyframes = _number(last_diag, "keyframes") - _number(first_diag, "keyframes")
    inference_ms = _number(last_diag, "inference_ms_p50")
    processed_hz = processed / elapsed if elapsed > 0 else float("nan")
    goal_hz = 0.6 / (inference_ms / 1000.0) if inference_ms > 0 else float("nan")
    growth = _rss_kb_per_place(data, last_diag)
    diag_times = [when for when, _ in data.diagnostics if data.start <= when <= data.end]
    diag_gaps = np.diff(diag_times) if len(diag_times) > 1 else np.zeros(0)
    return {
        "rows": rows,
        "latency": percentiles([ms for _, ms in latencies]),
        "stalls": _number(last_diag, "frames_over_1s") - _number(first_diag, "frames_over_1s"),
        "frame_max_ms": _finite_max(r["frame_max_ms"] for r in rows),
        "output_gaps": output_gaps,
        "rss_slope_kb_per_place": _rss_slope_kb_per_place(data),
        "rss_floor_slope_kb_per_place": _rss_floor_slope_kb_per_place(rows),
        # the second half: bounded buffers (the closure history, DDS segments, heap holes) filled by then
        "rss_floor_slope_late_kb_per_place": _rss_floor_slope_kb_per_place(rows, len(rows) // 2),
        "rss_part_slopes": {name: _rss_slope_kb_per_place(data, i) for i, name in enumerate(RSS_PARTS)},
        "processed_hz": processed_hz,
        "keyframe_hz": keyframes / elapsed if elapsed > 0 else float("nan"),
        "published_hz": len(data.publish_times) / elapsed if elapsed > 0 else float("nan"),
        "inference_ms": inference_ms,
        "goal_ratio": processed_hz / goal_hz if goal_hz == goal_hz else float("nan"),
        "stages": {
            k.removeprefix("stage_").removesuffix("_ms_p50"): v
            for k, v in last_diag.items()
            if k.startswith("stage_")
        },
        "rss_kb_per_place": growth,
        "places": (_number(first_diag, "map_size"), _number(last_diag, "map_size")),
        "dropped": _number(last_diag, "frames_dropped"),
        "services": {
            name: percentiles([ms for _, ms in calls], (50, 99, 100)) + [len(calls)]
            for name, calls in sorted(data.services.items())
        },
        "service_failures": dict(data.failures),
        "diagnostics_gap_max_s": float(diag_gaps.max()) if diag_gaps.size else float("nan"),
        "cpu_s_per_min": (data.samples[-1][2] - data.samples[0][2])
        * 60.0
        / (data.samples[-1][0] - data.samples[0][0])
        if len(data.samples) > 1
        else float("nan"),
    }


MINUTE_COLUMNS = (  # (header, row key, format) of the per-minute table
    ("minute", "minute", "{}"),
    ("published", "published", "{}"),
    ("keyframe outputs", "outputs", "{}"),
    ("map places", "map_size", "{:.0f}"),
    ("node RSS MiB", "rss_mb", "{:.1f}"),
    ("RSS floor MiB", "rss_floor_mb", "{:.1f}"),
    ("node CPU s/min", "cpu_s_per_min", "{:.1f}"),
    ("latency p50 ms", "p50", "{:.1f}"),
    ("p95 ms", "p95", "{:.1f}"),
    ("p99 ms", "p99", "{:.1f}"),
    ("stalls > 1 s", "stalls", "{:.0f}"),
    ("longest frame ms", "frame_max_ms", "{:.0f}"),
)


def report(data: RunData, summary: dict) -> None:
    f1 = "{:.1f}".format
    print(f"\n## executor: {data.executor}\n")
    print(
        table(
            [header for header, _, _ in MINUTE_COLUMNS],
            [[form.format(r[key]) for _, key, form in MINUTE_COLUMNS] for r in summary["rows"]],
        )
    )
    p50, p95, p99 = summary["latency"]
    print(
        f"\nwhole run: latency p50 {p50:.1f} / p95 {p95:.1f} / p99 {p99:.1f} ms; published "
        f"{summary['published_hz']:.1f} Hz; processed {summary['processed_hz']:.2f} Hz (frames taken from "
        f"the slot); keyframes {summary['keyframe_hz']:.2f} Hz; dropped in the slot {summary['dropped']:.0f}"
    )
    print(
        f"stalls (frames that held the inference loop > {STALL_S:.0f} s, node count): "
        f"{summary['stalls']:.0f}; longest frame {summary['frame_max_ms']:.0f} ms  [goal: 0]"
    )
    gaps = summary["output_gaps"]
    worst = ", ".join(f"{gap:.1f} s at +{when - data.start:.0f} s" for gap, when in sorted(gaps)[::-1][:5])
    print(
        f"gaps > {STALL_S:.0f} s between keyframe outputs (keyframe policy gaps included): {len(gaps)}"
        + (f"; worst: {worst}" if gaps else "")
    )
    ratio = summary["goal_ratio"]
    print(
        f"node inference p50 {summary['inference_ms']:.1f} ms -> 0.6 / inference = "
        f"{600.0 / summary['inference_ms'] if summary['inference_ms'] > 0 else float('nan'):.1f} Hz; "
        f"processed_Hz / (0.6 / inference_s) = {ratio:.2f}  [goal: >= 1]"
    )
    print("node stage p50 ms: " + ", ".join(f"{k} {v}" for k, v in summary["stages"].items()))
    places0, places1 = summary["places"]
    print(
        f"map: {places0:.0f} -> {places1:.0f} places; RSS growth {summary['rss_slope_kb_per_place']:.1f} KB "
        f"per place (least-squares slope of every sample after minute 1; end of minute 1 -> end: "
        f"{summary['rss_kb_per_place']:.1f} KB; by part: "
        + ", ".join(f"{name} {kb:.1f}" for name, kb in summary["rss_part_slopes"].items())
        + f"); RSS floor growth {summary['rss_floor_slope_kb_per_place']:.1f} KB per place (slope of the "
        f"per-minute minima after minute 1; over the second half "
        f"{summary['rss_floor_slope_late_kb_per_place']:.1f} KB)  [goal: <= 10 KB]"
    )
    print(
        f"node CPU: {summary['cpu_s_per_min']:.1f} s per minute ({summary['cpu_s_per_min'] / 60 * 100:.0f} % "
        f"of one core); /diagnostics largest gap {summary['diagnostics_gap_max_s']:.1f} s\n"
    )
    print(
        table(
            ["service", "calls", "p50 ms", "p99 ms", "max ms", "failed / timed out"],
            [
                [name, int(v[3]), f1(v[0]), f1(v[1]), f1(v[2]), summary["service_failures"].get(name, 0)]
                for name, v in summary["services"].items()
            ],
        )
    )
    print("  [goal: service p99 <= 200 ms while a 30k-place map saves]")


def compare(results: list[tuple[RunData, dict]]) -> None:
    print("\n## executor comparison\n")
    rows = []
    for data, s in results:
        worst_service = max((v[1] for v in s["services"].values()), default=float("nan"))
        rows.append(
            [
                data.executor,
                f"{s['cpu_s_per_min']:.1f}",
                f"{s['stalls']:.0f}",
                f"{s['latency'][0]:.1f}",
                f"{s['latency'][1]:.1f}",
                f"{s['processed_hz']:.2f}",
                f"{s['keyframe_hz']:.2f}",
                f"{worst_service:.1f}",
            ]
        )
    print(
        table(
            [
                "executor",
                "node CPU s/min",
                "stalls > 1 s",
                "latency p50 ms",
                "p95 ms",
                "processed Hz",
                "keyframe Hz",
                "worst service p99 ms",
            ],
            rows,
        )
    )


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="publishing time per executor")
    parser.add_argument("--rate", type=float, default=30.0, help="image (and odometry) rate, Hz")
    parser.add_argument("--speed", type=float, default=1.5, help="robot speed along the loop, m/s")
    parser.add_argument("--executor", default=DEFAULT_EXECUTOR, choices=(*EXECUTORS, "both"))
    parser.add_argument(
        "--preload-places",
        type=int,
        default=30_000,
        help="start from a map of N synthetic places (0: an empty map)",
    )
    parser.add_argument("--model-path", default="", help="trained student ('' = untrained, same cost)")
    parser.add_argument("--feature-method", default="sift", choices=("sift", "orb"))
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--min-interval-s",
        type=float,
        default=None,
        help="keyframe interval of the node (default: the shipped 0.15)",
    )
    parser.add_argument("--autosave-period-s", type=float, default=10.0)
    parser.add_argument("--storm-pause-s", type=float, default=0.2, help="pause between storm calls")
    parser.add_argument(
        "--reset-every",
        type=int,
        default=0,
        help="call ~/reset_map every N storm cycles (0: never; it empties the map)",
    )
    parser.add_argument("--no-storm", action="store_true", help="no service storm (baseline)")
    parser.add_argument("--frames-per-lap", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the run folders (map, node log)")
    args = parser.parse_args()

    from tscm_ros.describer import create_describer

    describer = create_describer(args.model_path or None, batch_size=1)
    dim, fingerprint = describer.dim, describer.fingerprint
    del describer
    print(
        f"soak: {args.minutes:g} min per executor, {WIDTH}x{HEIGHT} at {args.rate:g} Hz + odometry at "
        f"{args.speed:g} m/s, verify {args.verify} ({args.feature_method}), storm "
        f"{'off' if args.no_storm else f'every {args.storm_pause_s:g} s'}; host {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f}; ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="soak_map_"))
    map_dir = None
    try:
        if args.preload_places > 0:
            started = time.perf_counter()
            map_dir = scratch / "map"
            build_map(map_dir, args.preload_places, dim, fingerprint)
            print(
                f"built a {args.preload_places}-place map in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            cost = autosave_cost(map_dir, dim, fingerprint)
            ms = cost["ms"]
            print(
                f"autosave: {cost['places']} places + {cost['added']} new -> incremental save "
                f"p50 {np.median(ms):.1f} ms, max {max(ms):.1f} ms over {len(ms)} saves"
                "  [goal: < 50 ms at 30k]",
                flush=True,
            )
        route = Route.build(args.frames_per_lap)
        executors = ["multi_threaded", "events"] if args.executor == "both" else [args.executor]
        results = []
        for executor in executors:
            data = run_once(args, executor, map_dir, route)
            summary = summarise(data)
            report(data, summary)
            if "Traceback" in data.node_log:
                print("node log (tail):\n" + data.node_log[-3000:])
            results.append((data, summary))
        if len(results) > 1:
            compare(results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
