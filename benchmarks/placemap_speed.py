"""Place-map speed benchmark: build time, memory, single-query latency and recall@1 vs exact search.

For each database size and index spec, a fresh subprocess builds a :class:`PlaceMap` from unit vectors
generated in chunks (never the whole float32 database in memory unless the index holds it), then times
single-query searches with 1 and 2 faiss threads and compares the top-1 with exact (brute-force)
top-1 computed by streaming the same chunks.

Data: ``random`` -- database and queries are independent random unit vectors (no structure: the
hardest case for approximate indexes); ``revisit`` -- queries are stored vectors plus noise
(cosine ~0.8 to their source), renormalised, like a robot revisiting a place.

Goals (TSCM paper: matching < 0.6 ms/query at 10k): 10k x 2048-d <= 0.6 ms/query with recall@1 >= 0.99;
1M <= 5 ms/query with recall@1 >= 0.95 on revisit data.

    python benchmarks/placemap_speed.py --sizes 10k,100k            # markdown tables on stdout
    python benchmarks/placemap_speed.py --sizes 1m --data revisit   # reduced specs only at 1M
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 25_000
DEFAULT_SPECS = {
    10_000: [
        "flat",
        "hnsw:M=32,efC=200,efS=128",
        "pca256+flat",
        "pca256+hnsw:M=32,efC=200,efS=128",
        "ivf:nlist=256,nprobe=16",
        "pca256+ivf:nlist=256,nprobe=16,pq=64",
    ],
    # HNSW on raw 2048-d vectors is left out from 100k on: its build takes hours on a small CPU.
    100_000: [
        "flat",
        "pca256+flat",
        "pca256+hnsw:M=32,efC=100,efS=128",
        "ivf:nlist=256,nprobe=16",
        "pca256+ivf:nlist=1024,nprobe=16,pq=64",
    ],
    # 1M x 2048 float32 is 8 GiB: only reduced specs (exact flat with --allow-flat-1m).
    1_000_000: [
        "pca256+ivf:nlist=1024,nprobe=16,pq=64",
        "pca256+hnsw:M=32,efC=80,efS=128",
    ],
}


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def chunk_vectors(seed: int, chunk: int, rows: int, dim: int) -> np.ndarray:
    x = np.random.default_rng([seed, chunk]).standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def iter_chunks(n: int, dim: int, seed: int):
    for c, start in enumerate(range(0, n, CHUNK)):
        rows = min(CHUNK, n - start)
        yield start, chunk_vectors(seed, c, rows, dim)


def make_queries(n: int, dim: int, kind: str, n_queries: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 999])
    if kind == "random":
        q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    else:
        sources = np.sort(rng.choice(n, n_queries, replace=False))
        q = np.empty((n_queries, dim), np.float32)
        for start, x in iter_chunks(n, dim, seed):
            inside = (sources >= start) & (sources < start + len(x))
            q[inside] = x[sources[inside] - start]
        noise = rng.standard_normal((n_queries, dim), dtype=np.float32)
        q += 0.75 * noise / np.linalg.norm(noise, axis=1, keepdims=True)  # cosine to source ~0.8
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top1(n: int, dim: int, queries: np.ndarray, seed: int) -> np.ndarray:
    best = np.full(len(queries), -np.inf, np.float32)
    best_id = np.full(len(queries), -1, np.int64)
    for start, x in iter_chunks(n, dim, seed):
        sims = queries @ x.T
        arg = sims.argmax(axis=1)
        val = sims[np.arange(len(queries)), arg]
        better = val > best
        best[better], best_id[better] = val[better], arg[better] + start
    return best_id


def run_one(
    n: int, spec: str, data: str, dim: int, n_queries: int, seed: int, cache: Path, nprobes: list[int]
) -> list[dict]:
    """Build one map in this process and measure it (called in a fresh subprocess)."""
    import faiss

    from tscm_ros.placemap import PlaceMap, PlaceMeta

    key = cache / f"{data}_{n}_{dim}_{n_queries}_{seed}"
    if (key.with_suffix(".q.npy")).exists():
        queries, truth = np.load(key.with_suffix(".q.npy")), np.load(key.with_suffix(".gt.npy"))
    else:
        queries = make_queries(n, dim, data, n_queries, seed)
        truth = exact_top1(n, dim, queries, seed)
        np.save(key.with_suffix(".q.npy"), queries)
        np.save(key.with_suffix(".gt.npy"), truth)
    faiss.omp_set_num_threads(2)
    gc.collect()
    rss0 = rss_bytes()
    place_map = PlaceMap.create(dim, spec)
    build_s = 0.0
    for start, x in iter_chunks(n, dim, seed):
        metas = [PlaceMeta(stamp_ns=(start + i) * 100_000_000) for i in range(len(x))]
        t0 = time.perf_counter()
        place_map.add(x, metas)
        build_s += time.perf_counter() - t0
        del x
    gc.collect()
    rss1 = rss_bytes()
    base = {"n": n, "spec": spec, "data": data, "build_s": build_s, "rss_delta_mb": (rss1 - rss0) / 2**20}
    sweep = [None] if not nprobes or place_map.spec.kind != "ivf" else nprobes
    results = []
    for nprobe in sweep:
        if nprobe is not None:
            place_map.set_search_params(nprobe=nprobe)
        result = dict(base, spec=str(place_map.spec) if nprobe else spec)
        measure(place_map, queries, truth, result)
        results.append(result)
    return results


def measure(place_map, queries: np.ndarray, truth: np.ndarray, result: dict) -> None:
    import faiss

    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        for q in queries[:20]:  # warm-up
            place_map.search_arrays(q, 1)
        latencies = np.empty(len(queries))
        cpu = np.empty(len(queries))
        found = np.empty(len(queries), np.int64)
        for i, q in enumerate(queries):
            t0, c0 = time.perf_counter(), time.thread_time()
            _, ids = place_map.search_arrays(q, 1)
            latencies[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
            found[i] = ids[0, 0]
        result[f"ms_{threads}t"] = 1000 * float(np.median(latencies))
        result[f"p95_ms_{threads}t"] = 1000 * float(np.percentile(latencies, 95))
        if threads == 1:  # all work runs in this thread: its CPU time is the latency on an idle core
            result["cpu_ms_1t"] = 1000 * float(np.median(cpu))
    result["recall1"] = float(np.mean(found == truth))


def markdown(rows: list[dict]) -> str:
    head = "| data | size | spec | build s | RSS Δ MB | CPU ms/q 1t | ms/q 1t (p95) | ms/q 2t (p95) | R@1 |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['data']} | {label(r['n'])} | `{r['spec']}` | failed: {r['error']} | | | | | |"
            )
            continue
        cells = [
            r["data"],
            label(r["n"]),
            f"`{r['spec']}`",
            f"{r['build_s']:.1f}",
            f"{r['rss_delta_mb']:.0f}",
            f"{r['cpu_ms_1t']:.3f}",
        ]
        cells += [f"{r[f'ms_{t}t']:.3f} ({r[f'p95_ms_{t}t']:.3f})" for t in (1, 2)]
        cells.append(f"{r['recall1']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10k,100k", help="comma list, e.g. 10k,100k,1m (1M runs last)")
    parser.add_argument("--data", default="random,revisit", help="random, revisit or both")
    parser.add_argument("--specs", help="';'-separated specs for every size (default: per-size list)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-flat-1m", action="store_true", help="also run exact flat at >= 1M (8 GiB)")
    parser.add_argument("--json", type=Path, help="append every result as a JSON line here")
    parser.add_argument("--nprobe-sweep", help="IVF specs: also measure these nprobe values, e.g. 16,64")
    parser.add_argument("--table", type=Path, help="only print the tables of a --json file and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "n|spec|data|cache"
    args = parser.parse_args(argv)
    if args.table:
        print(markdown([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return 0
    if args.one:
        n, spec, data, cache = args.one.split("|")
        nprobes = [int(v) for v in args.nprobe_sweep.split(",")] if args.nprobe_sweep else []
        print(
            json.dumps(run_one(int(n), spec, data, args.dim, args.queries, args.seed, Path(cache), nprobes))
        )
        return 0
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    rows = []
    cache = Path(tempfile.mkdtemp(prefix="placemap_bench_"))
    for n in sizes:
        specs = args.specs.split(";") if args.specs else DEFAULT_SPECS.get(n, DEFAULT_SPECS[100_000])
        if n >= 1_000_000 and not args.allow_flat_1m:
            specs = [s for s in specs if s.split(":")[0] not in ("flat", "hnsw", "ivf")]
        for data in args.data.split(","):
            for spec in specs:
                one = f"{n}|{spec}|{data}|{cache}"
                cmd = [sys.executable, __file__, "--one", one, "--dim", str(args.dim),
                       "--queries", str(args.queries), "--seed", str(args.seed)]  # fmt: skip
                if args.nprobe_sweep:
                    cmd += ["--nprobe-sweep", args.nprobe_sweep]
                started = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if proc.returncode != 0:
                    error = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    new_rows = [{"n": n, "spec": spec, "data": data, "error": error}]
                else:
                    new_rows = json.loads(proc.stdout.strip().splitlines()[-1])
                for row in new_rows:
                    row["wall_s"] = time.perf_counter() - started
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    if args.json:
                        with open(args.json, "a") as stream:
                            stream.write(json.dumps(row) + "\n")
    print(f"\n{args.dim}-d descriptors, {args.queries} single queries, PlaceMap.search_arrays(q, k=1); "
          "wall latency = median (p95); CPU ms = median thread CPU time (load-independent); "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
