"""Services, parameters and /diagnostics never wait on inference or disk (issue #10, Executor).

The node runs with a slow map write (test/slow_save_node.py: each write phase sleeps SAVE_DELAY_S) and
autosave every 0.5 s, while frames stream and two clients storm it: one calls ~/save_map in a loop, the
other ~/reset_map, ~/set_mapping, set_parameters and get_parameters. Every call but save_map must answer
within 200 ms (p99); save_map answers once its own save is written; frames keep being processed while
saves write; /diagnostics keeps its 1 Hz; the map on disk afterwards is whole. Both executors: the
single-threaded EventsExecutor (default) holds nothing while ~/save_map awaits its write.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger

from tscm_ros.images import rgb_to_image_fields
from tscm_ros.placemap import PlaceMap
from tscm_ros.ros.messages import byte_array, diagnostic_values, ns_to_stamp
from tscm_ros.ros.place_recognition_node import EXECUTOR_ENV, EXECUTORS
from tscm_ros.ros.testing import NodeProcess, RosProbe, reliable_qos

pytestmark = pytest.mark.ros

NODE = "/place_recognition_node"
STATUS_NAME = "place_recognition_node: place recognition"
SAVE_DELAY_S = 1.0
STORM_S = 12.0
LATENCY_P99_S = 0.2
TEST_DIR = Path(__file__).resolve().parent
PARAMETERS = {
    "verify": False,
    "reliable_qos": True,
    "min_interval_s": 0.0,
    "min_descriptor_change": 0.0,
    "min_travel_m": 0.0,
    "exclusion_travel_m": 0.0,
    "exclusion_window_s": 0.0,
    "similarity_threshold": -1.0,
    "consistency_n": 1,
    "top_k": 3,
    "autosave_period_s": 0.5,
}


def image_message(rgb: np.ndarray, stamp_ns: int) -> Image:
    fields = rgb_to_image_fields(rgb, "rgb8")
    msg = Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"))
    msg.height, msg.width, msg.encoding = fields["height"], fields["width"], fields["encoding"]
    msg.is_bigendian, msg.step = fields["is_bigendian"], fields["step"]
    msg.data = byte_array(fields["data"])
    return msg


def timed_call(client, request, timeout: float = 30.0) -> tuple[float, object]:
    """(seconds until the answer, the answer)."""
    done = threading.Event()
    started = time.perf_counter()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), f"{client.srv_name} did not answer in {timeout} s"
    return time.perf_counter() - started, future.result()


def node_values(msg: DiagnosticArray) -> dict[str, str] | None:
    status = next((s for s in msg.status if s.name == STATUS_NAME), None)
    return None if status is None else diagnostic_values(status)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_services_parameters_and_diagnostics_answer_during_slow_saves(executor: str, tmp_path: Path):
    map_path = tmp_path / "map"
    python_path = os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH", "")]))
    with RosProbe("storm_probe") as probe:
        diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(50))
        candidates = probe.subscribe(PointCloud2, f"{NODE}/loop_candidates", reliable_qos(50))
        images = probe.publisher(Image, "/image", reliable_qos(5))
        node = NodeProcess(
            "slow_save_node",
            parameters={**PARAMETERS, "map_path": str(map_path)},
            env={
                "PYTHONPATH": python_path,
                "TSCM_TEST_SAVE_DELAY_S": str(SAVE_DELAY_S),
                EXECUTOR_ENV: executor,
            },
        )
        try:
            assert node.wait_for_output("ready:", 180.0), node.output()
            assert probe.wait_for_subscribers(images, 1, 20.0)
            clients = {
                name: probe.node.create_client(kind, f"{NODE}/{name}")
                for name, kind in (
                    ("save_map", Trigger), ("reset_map", Trigger), ("set_mapping", SetBool),
                    ("set_parameters", SetParameters), ("get_parameters", GetParameters),
                )
            }  # fmt: skip
            for client in clients.values():
                assert client.wait_for_service(timeout_sec=20.0), client.srv_name

            rng = np.random.default_rng(0)
            frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(8)]
            stop_streaming = threading.Event()

            def stream() -> None:  # ~10 Hz
                stamp = 1_000_000_000_000
                while not stop_streaming.is_set():
                    images.publish(image_message(frames[stamp // 100_000_000 % len(frames)], stamp))
                    stamp += 100_000_000
                    time.sleep(0.1)

            streamer = threading.Thread(target=stream, daemon=True)
            streamer.start()
            assert candidates.wait_count(3, 60.0), "the node processed no frames"

            latencies: dict[str, list[float]] = {name: [] for name in clients}
            save_windows: list[tuple[float, float]] = []
            failures: list[str] = []
            deadline = time.monotonic() + STORM_S

            def save_loop() -> None:
                while time.monotonic() < deadline:
                    started = time.time()
                    seconds, answer = timed_call(clients["save_map"], Trigger.Request())
                    save_windows.append((started, time.time()))
                    latencies["save_map"].append(seconds)
                    if not answer.success:
                        failures.append(f"save_map: {answer.message}")

            saver = threading.Thread(target=save_loop, daemon=True)
            saver.start()
            i = 0
            while time.monotonic() < deadline:
                mapping = i % 2 == 1
                calls = [
                    ("reset_map", Trigger.Request()),
                    ("set_mapping", SetBool.Request(data=mapping)),
                    ("set_parameters", SetParameters.Request(
                        parameters=[Parameter("top_k", value=3 + i % 2).to_parameter_msg()])),
                    ("set_parameters", SetParameters.Request(  # rejected: out of range, also at once
                        parameters=[Parameter("top_k", value=-5).to_parameter_msg()])),
                    ("get_parameters", GetParameters.Request(names=["top_k", "mode"])),
                ]  # fmt: skip
                for name, request in calls:
                    seconds, answer = timed_call(clients[name], request)
                    latencies[name].append(seconds)
                    if name in ("reset_map", "set_mapping") and not answer.success:
                        failures.append(f"{name}: {answer.message}")
                i += 1
            saver.join(timeout=4 * SAVE_DELAY_S + 30.0)
            stop_streaming.set()
            streamer.join(timeout=5.0)
            assert not failures, failures

            # every call but save_map answered at once (p99), also while saves were writing
            report = {
                name: (len(values), float(np.percentile(values, 99)), max(values))
                for name, values in latencies.items()
            }
            print("service latency (count, p99 s, max s):", report)
            for name, (count, p99, _) in report.items():
                if name != "save_map":
                    assert count >= 5, (name, count)
                    assert p99 <= LATENCY_P99_S, (name, report[name])
            # save_map answered once its own save was written: at most an autosave in flight plus its own.
            # A save is the injected delay plus real work, which on 2 loaded cores took up to 0.7 s more
            # (the node's /diagnostics last_save_ms), so the bound is two of the longest saves plus 1 s
            assert report["save_map"][0] >= 2
            assert min(latencies["save_map"]) >= SAVE_DELAY_S  # it did wait for the (slow) write
            save_s = [
                float(values["last_save_ms"]) / 1000.0
                for _, msg in diagnostics.items
                if (values := node_values(msg)) is not None and values.get("last_save_ms", "nan") != "nan"
            ]
            longest_save_s = max(save_s, default=SAVE_DELAY_S)
            print(f"longest save {longest_save_s:.2f} s")
            assert report["save_map"][2] <= 2 * longest_save_s + 1.0, (report["save_map"], longest_save_s)

            # frames kept being processed while saves were writing
            during_saves = [t for t, _ in candidates.items if any(a <= t <= b for a, b in save_windows)]
            assert len(during_saves) >= len(save_windows), (len(during_saves), len(save_windows))

            # /diagnostics kept its 1 Hz through the storm
            stamps = [t for t, msg in diagnostics.items if node_values(msg) is not None]
            storm_stamps = [t for t in stamps if save_windows[0][0] <= t <= save_windows[-1][1]]
            assert len(storm_stamps) >= 5 and max(np.diff(storm_stamps)) < 1.6, np.diff(storm_stamps)

            # the map on disk is whole: quiet now, the last save holds what the node reports
            time.sleep(1.0)
            seconds, answer = timed_call(clients["save_map"], Trigger.Request())
            assert answer.success, answer.message
            saved = int(answer.message.split()[1])
            loaded = PlaceMap.load(map_path)
            assert len(loaded) == saved
            loaded.close()
        finally:
            code = node.stop()
            print(node.output()[-3000:])
        assert code == 0
