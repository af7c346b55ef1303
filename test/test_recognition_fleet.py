"""RecognitionSession on the fleet store (a real PostgreSQL + pgvector server, fixture ``fleet_pg``).

* one robot: the same stream gives the same candidates (and verified closures) on the fleet store as on the
  local faiss map;
* two robots: a second robot/session sees the first one's places as candidates, verified with the features
  stored on the server, labelled with the first robot's id and session -- also while both are "now" (the
  exclusion window covers only the querying robot's own session); the query filters apply at runtime;
* an unreachable server: the session works from the local copy (fallback), diagnostics say disconnected;
  malformed or unsuitable targets fail with one clear line that never shows a password.

Scene and descriptors as in test_recognition.py: the demo scene rendered with depth, a grey-thumbnail
stand-in descriptor (fast, deterministic; proposes right and wrong places so verification matters).
"""

from __future__ import annotations

import dataclasses
import math
import socket

import numpy as np
import pytest

pytest.importorskip("psycopg")
pytest.importorskip("pgvector")

from fleet_support import drop_schema, new_schema, server_rows  # noqa: E402

from tscm_ros.demo.scene import (  # noqa: E402
    SceneConfig,
    build_world,
    plan_trajectory,
    render_with_depth,
    scene_intrinsics,
)
from tscm_ros.fleet import fleet_place_id  # noqa: E402
from tscm_ros.placemap import PlaceMap, Pose  # noqa: E402
from tscm_ros.recognition import RecognitionConfig, RecognitionError, RecognitionSession  # noqa: E402

SCENE = SceneConfig(width=320, height=240, frames_per_lap=40)
LAP = SCENE.frames_per_lap
LAP_S = LAP / SCENE.rate_hz
DIM = 192
FP = "fp-recognition-fleet-" + "0" * 43
OPTIONS = {
    "similarity_threshold": -1.0,
    "exclusion_window_s": LAP_S / 3,
    "top_k": 3,
    "min_interval_s": 0.0,  # every frame a keyframe
    "min_travel_m": 0.0,
}


@dataclasses.dataclass
class Frame:
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    pose: Pose


def thumbnail_descriptor(rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float64).mean(axis=2)
    h, w = grey.shape
    small = grey[: h - h % 12, : w - w % 16].reshape(12, h // 12, 16, w // 16).mean(axis=(1, 3))
    vector = small.ravel() - small.mean()
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    world = build_world(SCENE)
    rng = np.random.default_rng(3)
    out = []
    for sample in plan_trajectory(SCENE, world):
        rgb, depth = render_with_depth(
            world, np.array(sample.position[:2]), sample.yaw, brightness=0.95 if sample.lap else 1.0
        )
        if sample.lap:
            rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
        out.append(Frame(sample.stamp_ns, rgb, depth, Pose(sample.position, sample.orientation, "map")))
    return out


@pytest.fixture
def fleet(fleet_pg, request):
    """(uri, schema): a fresh fleet map schema for 192-d descriptors of model FP."""
    uri = fleet_pg.uri()
    schema = new_schema(uri, dim=DIM, fingerprint=FP)
    request.addfinalizer(lambda: drop_schema(uri, schema))
    return uri, schema


def open_session(uri: str, schema: str, map_path, robot: str, session: str, **options) -> RecognitionSession:
    return RecognitionSession.open(
        dim=DIM, model_fingerprint=FP, map_path=str(map_path), load=False, index_spec="flat",
        options={**OPTIONS, **options}, map_uri=uri, map_schema=schema, robot_id=robot, session_id=session,
    )  # fmt: skip


def run(session: RecognitionSession, frames: list[Frame], stamps: list[int] | None = None, verify=True):
    intrinsics = scene_intrinsics(SCENE)
    results = []
    for index, frame in enumerate(frames):
        results.append(
            session.process(
                thumbnail_descriptor(frame.rgb),
                frame.stamp_ns if stamps is None else stamps[index],
                image=frame.rgb if verify else None,
                depth=frame.depth if verify else None,
                intrinsics=intrinsics if verify else None,
                pose=frame.pose,
            )  # fmt: skip
        )
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------------ tests
def test_one_robot_gets_the_local_map_candidates(frames, fleet, tmp_path):
    uri, schema = fleet
    local = RecognitionSession.open(
        dim=DIM, model_fingerprint=FP, map_path=None, load=False, index_spec="flat", options=OPTIONS
    )
    assert isinstance(local.place_map, PlaceMap) and not local.is_fleet and local.map_diagnostics() == {}
    shared = open_session(uri, schema, tmp_path / "robot_a", "robot_a", "s1")
    assert shared.is_fleet and (shared.robot_id, shared.session_id) == ("robot_a", "s1")
    local_results, fleet_results = run(local, frames), run(shared, frames)

    def decisions(result) -> list[tuple]:
        return [(c.match_keyframe_index, c.match_stamp_ns, c.verified, c.inliers) for c in result.candidates]

    # the server stores descriptors as halfvec: similarities agree to ~1e-3, so near ties may swap ranks
    near_ties, differing = 0, []
    for index, (a, b) in enumerate(zip(local_results, fleet_results, strict=True)):
        assert a.keyframe_index == b.keyframe_index == index
        sims_a = [c.similarity for c in a.candidates]
        np.testing.assert_allclose(sorted(sims_a), sorted(c.similarity for c in b.candidates), atol=3e-3)
        near_ties += any(abs(x - y) < 3e-3 for x, y in zip(sims_a, sims_a[1:], strict=False))
        if decisions(a) != decisions(b):
            differing.append(index)
    assert len(differing) <= near_ties, (differing, near_ties)
    closures_local = sum(bool(r.closures) for r in local_results[LAP:])
    closures_fleet = sum(bool(r.closures) for r in fleet_results[LAP:])
    assert closures_fleet >= 0.5 * LAP and abs(closures_fleet - closures_local) <= len(differing)
    print(f"\none robot: {len(frames)} keyframes, {closures_local} / {closures_fleet} revisits verified "
          f"(local / fleet), {len(differing)} keyframes differ, {near_ties} with near ties")  # fmt: skip

    # fleet ids, identity and "this run" on the fleet candidates
    for result in fleet_results:
        assert result.place_id == fleet_place_id("robot_a", "s1", result.keyframe_index)
        for candidate in result.candidates:
            assert (candidate.match_robot_id, candidate.match_session_id) == ("robot_a", "s1")
            assert candidate.match_id == fleet_place_id("robot_a", "s1", candidate.match_keyframe_index)
            assert shared.from_this_run(candidate)
    assert all(c.match_robot_id == "" for r in local_results for c in r.candidates)
    assert shared.place_map.flush(20.0)
    diagnostics = shared.map_diagnostics()
    assert diagnostics["connection_state"] == "connected" and diagnostics["outbox_depth"] == "0"
    assert (diagnostics["robot_id"], diagnostics["session_id"], diagnostics["schema"]) == (
        "robot_a",
        "s1",
        schema,
    )
    assert "password" not in diagnostics["target"] or "***" in diagnostics["target"]
    assert shared.save(str(tmp_path / "robot_a")) == len(frames)  # the local copy
    shared.close()
    local.close()
    assert len(server_rows(uri, schema)) == len(frames)


def test_second_robot_sees_the_first_robots_places(frames, fleet, tmp_path):
    uri, schema = fleet
    robot_a = open_session(uri, schema, tmp_path / "robot_a", "robot_a", "a1")
    run(robot_a, frames[:LAP])  # robot A maps lap 1
    assert robot_a.place_map.flush(20.0)
    robot_a.close()

    # robot B drives lap 2 at the same time as robot A drove lap 1: A's places are "now" for B, yet they are
    # candidates -- the exclusion window covers only B's own session
    robot_b = open_session(uri, schema, tmp_path / "robot_b", "robot_b", "b1")
    lap2 = frames[LAP:]
    stamps = [f.stamp_ns for f in frames[:LAP]]
    results = run(robot_b, lap2, stamps)
    window_ns = OPTIONS["exclusion_window_s"] * 1e9
    from_a = [c for r in results for c in r.candidates if c.match_robot_id == "robot_a"]
    assert len(from_a) >= 2 * LAP  # of 3 per keyframe
    assert all(c.match_session_id == "a1" and not robot_b.from_this_run(c) for c in from_a)
    assert any(abs(c.match_stamp_ns - c.query_stamp_ns) < window_ns for c in from_a)
    own = [c for r in results for c in r.candidates if c.match_robot_id == "robot_b"]
    assert all(c.match_session_id == "b1" and c.query_stamp_ns - c.match_stamp_ns >= window_ns for c in own)
    # verified with A's features from the server (B's local copy holds only its own places)
    closures = [r.closures[0] for r in results if r.closures]
    assert len(closures) >= 0.5 * LAP
    assert all(c.match_robot_id == "robot_a" for c in closures)
    wrong = [c for c in closures if math.dist(c.query_pose.position, c.match_pose.position) > 3.0]
    assert len(wrong) <= 0.05 * len(closures)
    assert all(c.verification.model == "pnp" and c.verification.scale_known for c in closures)
    print(
        f"\nsecond robot: {len(from_a)} candidates from robot_a, {len(closures)} of {LAP} revisits verified"
    )

    # query filters, changed at runtime
    base = {**OPTIONS, "exclusion_window_s": 0.0}
    robot_b.configure({**base, "query_exclude_robots": ["robot_a"]})
    late = [f.stamp_ns + 10 * LAP_S * 1e9 for f in lap2[:5]]
    filtered = run(robot_b, lap2[:5], [int(s) for s in late], verify=False)
    assert all(c.match_robot_id == "robot_b" for r in filtered for c in r.candidates)
    robot_b.configure({**base, "query_robots": ["robot_a"], "query_exclude_sessions": ["zzz"]})
    only_a = run(robot_b, lap2[5:10], [int(s + 1e9) for s in late], verify=False)
    assert all(len(r.candidates) == 3 for r in only_a)
    assert all(c.match_robot_id == "robot_a" for r in only_a for c in r.candidates)
    robot_b.configure({**base, "query_sessions": ["a1", "b1"], "query_exclude_sessions": ["a1"]})
    only_b = run(robot_b, lap2[10:12], [int(s + 2e9) for s in late[:2]], verify=False)
    assert all(c.match_session_id == "b1" for r in only_b for c in r.candidates)
    with pytest.raises(ValueError, match="query_robots"):
        robot_b.configure({**base, "query_robots": "robot_a"})
    assert robot_b.place_map.flush(20.0)
    with pytest.raises(RecognitionError, match="reset is not available on a fleet map"):
        robot_b.reset()
    robot_b.close()
    rows = server_rows(uri, schema)
    assert sum(r[0] == "robot_a" for r in rows) == LAP and sum(r[0] == "robot_b" for r in rows) == LAP + 12


def test_sequence_matching_on_the_fleet_map(frames, fleet, tmp_path):
    """Sequence matching ranks fleet candidates as local ones, and never joins places of two sessions."""
    uri, schema = fleet
    options = {"sequence_length": 4, "verify": False}
    local = RecognitionSession.open(
        dim=DIM, model_fingerprint=FP, map_path=None, load=False, index_spec="flat",
        options={**OPTIONS, **options},
    )  # fmt: skip
    robot_a = open_session(uri, schema, tmp_path / "a1", "robot_a", "a1", **options)
    local_results, fleet_results = run(local, frames, verify=False), run(robot_a, frames, verify=False)
    for a, b in zip(local_results, fleet_results, strict=True):
        assert a.sequence_partial == b.sequence_partial
        assert [c.match_keyframe_index for c in a.candidates] == [
            c.match_keyframe_index for c in b.candidates
        ]
        np.testing.assert_allclose(
            [c.sequence_score for c in a.candidates], [c.sequence_score for c in b.candidates], atol=0.05
        )
    assert robot_a.place_map.flush(20.0)
    robot_a.close()
    local.close()
    # a second session of robot A maps lap 1 from another starting point: its keyframe indices overlap
    # a1's for other places; robot B's sequences must follow one session's route
    shifted = frames[20:LAP] + frames[:20]
    robot_a2 = open_session(uri, schema, tmp_path / "a2", "robot_a", "a2", **options)
    run(robot_a2, shifted, [f.stamp_ns + int(1000e9) + i for i, f in enumerate(frames[:LAP])], verify=False)
    assert robot_a2.place_map.flush(20.0)
    robot_a2.close()
    robot_b = open_session(uri, schema, tmp_path / "b", "robot_b", "b1", exclusion_window_s=1e5, **options)
    results = run(robot_b, frames[LAP:], verify=False)
    full = [r for r in results if r.candidates and not r.sequence_partial]
    assert len(full) >= LAP - 8
    assert all(c.sequence_length == 4 and c.match_robot_id == "robot_a" for r in full for c in r.candidates)
    near = [math.dist(c.query_pose.position, c.match_pose.position) < 3.0 for r in full for c in r.candidates]
    # without separate sessions on the sequence axis, a2's keyframe k (another place) would ride on a1's line
    # through keyframe k and rank among the top 3
    assert np.mean(near) >= 0.9, np.mean(near)
    print(f"\nsequence matching across sessions: {len(full)} full, candidates within 3 m {np.mean(near):.2f}")
    robot_b.close()


def test_unreachable_server_falls_back_to_the_local_copy(frames, fleet, tmp_path):
    uri = f"postgresql://robot:s3cret@127.0.0.1:{free_port()}/fleet"
    session = open_session(uri, "tscm", tmp_path / "robot_a", "robot_a", "s1")
    diagnostics = session.map_diagnostics()
    assert diagnostics["connection_state"] == "disconnected"
    assert "s3cret" not in str(diagnostics) and "password=***" in diagnostics["target"]
    results = run(session, frames[: LAP + 10])
    assert sum(bool(r.closures) for r in results[LAP:]) >= 5  # revisits verified from the local copy
    assert all(c.match_robot_id == "robot_a" for r in results for c in r.candidates)
    diagnostics = session.map_diagnostics()
    assert diagnostics["connection_state"] == "disconnected"
    assert diagnostics["outbox_depth"] == str(LAP + 10) and int(diagnostics["fallback_queries"]) >= LAP
    assert session.save(str(tmp_path / "robot_a")) == LAP + 10
    session.close()
    # the next start against the real server flushes what the outbox kept
    real_uri, schema = fleet
    again = open_session(real_uri, schema, tmp_path / "robot_a", "robot_a", "s2")
    assert again.place_map.flush(20.0) and again.map_diagnostics()["connection_state"] == "connected"
    assert {(r[0], r[1]) for r in server_rows(real_uri, schema)} == {("robot_a", "s1")}
    again.close()


@pytest.mark.parametrize(
    "map_uri, map_path, expected",
    [
        ("postgresql://u:s3cret@[::1/db", "map", "map_uri is malformed"),
        ("postgresql://u:s3cret@host/db?foo=bar", "map", "map_uri is malformed"),
        ("postgresq://u:s3cret@host/db", "map", "is not a PostgreSQL target"),
        ("maps/site_a", "map", "is not a PostgreSQL target"),
        ("service=fleet", "", "map_uri needs map_path"),
    ],
)
def test_bad_targets_are_one_clear_line(map_uri, map_path, expected, tmp_path):
    with pytest.raises(RecognitionError) as info:
        open_session(map_uri, "tscm", tmp_path / map_path if map_path else "", "r", "s")
    message = str(info.value)
    assert expected in message and "\n" not in message and "s3cret" not in message, message


def test_other_model_or_missing_schema_is_refused(fleet, tmp_path):
    uri, schema = fleet
    with pytest.raises(RecognitionError, match="model fingerprint") as info:
        RecognitionSession.open(
            dim=DIM, model_fingerprint="fp-other-" + "1" * 55, map_path=str(tmp_path / "m1"), load=False,
            index_spec="flat", options=OPTIONS, map_uri=uri, map_schema=schema, robot_id="r", session_id="s",
        )  # fmt: skip
    assert "cannot open the fleet map" in str(info.value)
    with pytest.raises(RecognitionError, match="holds no fleet map"):
        open_session(uri, "no_such_schema", tmp_path / "m2", "r", "s")


def test_default_identity(fleet, tmp_path):
    uri, schema = fleet
    session = RecognitionSession.open(
        dim=DIM, model_fingerprint=FP, map_path=str(tmp_path / "m"), load=False, index_spec="flat",
        options=OPTIONS, map_uri=uri, map_schema=schema,
    )  # fmt: skip
    try:
        assert session.robot_id == socket.gethostname()
        assert len(session.session_id) == 20 and session.session_id.endswith("Z")  # 2024-06-01T12:00:00Z
    finally:
        session.close()


def test_sequences_never_join_places_of_two_sessions():
    """A place of session a2 that looks like the query must not inherit the sequence that session a1's places
    form up to it: keyframe indices of different sessions are unrelated (LocalPlaceStore, no server)."""
    from tscm_ros.fleet import FleetPlaceMeta, LocalPlaceStore

    dim, rng = 32, np.random.default_rng(5)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    route, other, lookalike = unit(rng.normal(size=(10, dim))), unit(rng.normal(size=(10, dim))), 5
    store = LocalPlaceStore.open(None, dim=dim, robot_id="robot_b", session_id="b1")
    for session, vectors in (("a1", route), ("a2", other)):
        metas = [FleetPlaceMeta(stamp_ns=k * 10**9, keyframe_index=k, robot_id="robot_a", session_id=session)
                 for k in range(10)]  # fmt: skip
        store.add(vectors, metas)
    options = {**OPTIONS, "sequence_length": 4, "verify": False, "exclusion_window_s": 1e5}
    session = RecognitionSession(store, RecognitionConfig.from_options(options))
    assert session.is_fleet
    # robot B follows a1's route for 5 keyframes, then sees what a2's keyframe 5 shows (a1's is elsewhere)
    queries = [route[k] for k in range(5)] + [other[lookalike]]
    results = []
    for index, vector in enumerate(queries):
        noisy = unit(vector + 0.05 * rng.normal(size=dim))
        results.append(session.process(noisy, 100 * 10**9 + index * 10**9))
    for k in (3, 4):  # full sequences along a1's route
        best = results[k].candidates[0]
        assert (best.match_session_id, best.match_keyframe_index, best.sequence_length) == ("a1", k, 4)
    last = results[-1]
    assert not last.sequence_partial
    assert not [c for c in last.candidates if c.match_session_id == "a2"], last.candidates
    session.close()
