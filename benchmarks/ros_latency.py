"""Camera -> keyframe-output latency of place_recognition_node over Fast DDS on one host.

Publishes 640x480 rgb8 sensor_msgs/Image frames of the demo scene (two laps, so later frames revisit earlier
places; best-effort sensor-data QoS, as camera drivers do) at 5 Hz and 30 Hz, with geometric verification of
5 candidates per keyframe unless ``--no-verify``, to a node process started with ``publish_descriptor: true``
and ``min_interval_s: 0`` so every processed frame produces a ``~/descriptor`` message. Latency = wall-clock
receive time of that message minus the wall-clock publish time of the image with the same header stamp (both
on this host). Also reports dropped frames (published minus processed), the node process' CPU %, the
Describer's own time on the same image and the node's per-stage p50 from /diagnostics.

    .venv/bin/python benchmarks/ros_latency.py [--phases 2:20,5:30,30:60] [--model-path DIR] [--no-verify]

Uses the loopback Fast DDS profile and a private ROS domain unless they are already set in the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))  # valid ids: 0-101

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from tscm_ros.ros.messages import diagnostic_values, ns_to_stamp, rgb_image_msg, stamp_to_ns  # noqa: E402
from tscm_ros.ros.testing import NodeProcess, RosProbe, best_effort_qos, cpu_seconds, reliable_qos  # noqa: E402

NODE = "/place_recognition_node"
WIDTH, HEIGHT = 640, 480


def describer_time_ms(model_path: str | None, rgb: np.ndarray, repeats: int) -> tuple[float, float]:
    """p50 / p95 of Describer.describe on one image, in this process (node not running)."""
    from tscm_ros.describer import create_describer

    describer = create_describer(model_path, batch_size=1)
    describer.describe(rgb)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        describer.describe(rgb)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def make_image(rgb: np.ndarray) -> Image:
    return rgb_image_msg(Header(frame_id="camera"), rgb)


def run_rate(
    probe: RosProbe, node: NodeProcess, rate_hz: float, duration_s: float, msgs: list[Image]
) -> dict:
    """Publish at ``rate_hz`` for ``duration_s``; return latency / drop / CPU figures."""
    descriptors = probe.subscribe(PointCloud2, f"{NODE}/descriptor", reliable_qos(100))
    publisher = probe.publisher(Image, "/image", best_effort_qos(1))
    assert probe.wait_for_subscribers(publisher, 1, 30.0), "node did not subscribe"
    time.sleep(1.0)  # let the descriptor subscription match too
    published: dict[int, float] = {}
    period = 1.0 / rate_hz
    base_stamp_ns = int(rate_hz) * 1_000_000 * 1_000_000_000  # distinct stamps per run
    cpu_start, wall_start = cpu_seconds(node.pid), time.monotonic()
    next_time = time.monotonic()
    index = 0
    while time.monotonic() - wall_start < duration_s:
        stamp_ns = base_stamp_ns + int(index * period * 1e9)
        msg = msgs[index % len(msgs)]
        msg.header.stamp = ns_to_stamp(stamp_ns)
        published[stamp_ns] = time.time()
        publisher.publish(msg)
        index += 1
        next_time += period
        time.sleep(max(0.0, next_time - time.monotonic()))
    time.sleep(2.0)  # the last frame in flight
    cpu = (cpu_seconds(node.pid) - cpu_start) / (time.monotonic() - wall_start) * 100
    received = [(when, stamp_to_ns(m.header.stamp)) for when, m in descriptors.items]
    latencies = [(published[s] - published[min(published)], (when - published[s]) * 1000)
                 for when, s in received if s in published]  # fmt: skip
    probe.node.destroy_publisher(publisher)
    values = np.array([ms for _, ms in latencies])
    first = np.array([ms for t, ms in latencies if t < 10.0])
    last = np.array([ms for t, ms in latencies if t >= duration_s - 10.0])
    return {
        "rate_hz": rate_hz,
        "published": len(published),
        "processed": len(latencies),
        "dropped": len(published) - len(latencies),
        "p50": float(np.percentile(values, 50)) if values.size else float("nan"),
        "p95": float(np.percentile(values, 95)) if values.size else float("nan"),
        "first10_p50": float(np.percentile(first, 50)) if first.size else float("nan"),
        "last10_p50": float(np.percentile(last, 50)) if last.size else float("nan"),
        "cpu_percent": cpu,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default="", help="trained student ('' = untrained, same cost)")
    parser.add_argument(
        "--phases",
        default="2:20,5:30,30:60",
        help="RATE_HZ:SECONDS,... (2 Hz: the worker is idle between frames)",
    )
    parser.add_argument("--describer-repeats", type=int, default=15)
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="geometric verification on (the default): demo-scene frames at 640x480 with known intrinsics, "
        "so every keyframe extracts features and verifies its candidates",
    )
    parser.add_argument("--feature-method", default="sift", choices=("sift", "orb"))
    parser.add_argument(
        "--min-interval-s",
        type=float,
        default=0.0,
        help="keyframe interval of the node (0: every processed frame is a keyframe; the shipped default is "
        "0.15)",
    )
    return parser.parse_args()


def node_parameters(args: argparse.Namespace, intrinsics) -> dict:
    """place_recognition_node parameters: every processed frame publishes a descriptor."""
    return {
        "model_path": args.model_path,
        "publish_descriptor": True,
        "min_interval_s": args.min_interval_s,
        "similarity_threshold": -1.0,
        "top_k": 5,
        "verify": args.verify,
        "verify_top_k": 5,  # every keyframe verifies 5 candidates: the worst case of the defaults
        "feature_method": args.feature_method,
        "exclusion_window_s": 5.0,  # candidates exist from the 6th second on
        "camera_intrinsics": [intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy],
    }


def run_phases(
    parameters: dict, phases: list[tuple[float, float]], frames: list[np.ndarray]
) -> list[dict] | None:
    """Start the node and run every (rate, duration) phase; None when the node does not come up."""
    results = []
    with RosProbe("latency_probe") as probe, NodeProcess(parameters=parameters) as node:
        diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(10))
        if not node.wait_for_output("ready:", 300):
            print(node.output(), file=sys.stderr)
            return None
        for rate, duration in phases:
            result = run_rate(probe, node, rate, duration, [make_image(frame) for frame in frames])
            # the node's own inference time over (about) the same frames, from /diagnostics
            diagnostics.clear()
            diagnostics.wait_count(1, 5.0)
            values = diagnostic_values(diagnostics.messages[-1].status[0]) if diagnostics.messages else {}
            result["inference_p50"] = float(values.get("inference_ms_p50", "nan"))
            result["stages"] = {
                key.removeprefix("stage_").removesuffix("_ms_p50"): float(value)
                for key, value in values.items()
                if key.startswith("stage_")
            }
            results.append(result)
    return results


def print_report(
    args: argparse.Namespace,
    results: list[dict],
    describer_before: tuple[float, float],
    describer_after: tuple[float, float],
) -> None:
    print(
        f"\nplace_recognition_node latency, {WIDTH}x{HEIGHT} rgb8, best-effort sensor QoS, loopback Fast DDS"
    )
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; model: "
          f"{args.model_path or 'untrained student'}")  # fmt: skip
    print(
        f"Describer alone (this process, same image, p50/p95 ms): before {describer_before[0]:.1f}/"
        f"{describer_before[1]:.1f}, after {describer_after[0]:.1f}/{describer_after[1]:.1f}"
    )
    columns = ["input", "published", "processed", "dropped", "latency p50 ms", "p95 ms", "first 10 s p50",
               "last 10 s p50", "node inference p50 ms", "p50 - inference", "node CPU %"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        cells = [f"{r['rate_hz']:.0f} Hz", r["published"], r["processed"], r["dropped"]]
        cells += [f"{r[key]:.1f}" for key in ("p50", "p95", "first10_p50", "last10_p50", "inference_p50")]
        cells.append(f"{r['p50'] - r['inference_p50']:+.1f}")
        cells.append(f"{r['cpu_percent']:.0f}")
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print("\nper-stage p50 (ms, node /diagnostics, whole run so far):")
    for r in results:
        stages = ", ".join(f"{name} {ms:.1f}" for name, ms in r["stages"].items())
        print(f"  {r['rate_hz']:.0f} Hz: {stages}")


def main() -> int:
    args = parse_args()
    phases = [
        (float(rate), float(seconds)) for rate, seconds in (p.split(":") for p in args.phases.split(","))
    ]
    from tscm_ros.demo.scene import SceneConfig, generate_frames, scene_intrinsics

    scene = SceneConfig(width=WIDTH, height=HEIGHT, frames_per_lap=60)
    frames = [frame.rgb for frame in generate_frames(scene)]  # two laps: later frames revisit earlier ones
    rgb = frames[0]
    describer_before = describer_time_ms(args.model_path or None, rgb, args.describer_repeats)
    parameters = node_parameters(args, scene_intrinsics(scene))
    results = run_phases(parameters, phases, frames)
    if results is None:
        return 1
    describer_after = describer_time_ms(args.model_path or None, rgb, args.describer_repeats)
    print_report(args, results, describer_before, describer_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
