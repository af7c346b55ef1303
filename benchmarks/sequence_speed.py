"""Sequence matcher cost per query keyframe, on top of retrieval, at 10k / 100k / 1M places.

The map is a route of random unit descriptors (map keyframe index = row); the queries revisit a stretch of
it at 1.3x speed with noise. Per query keyframe the table reports, separately:

* **retrieval** -- one single-query exact inner-product search (faiss ``IndexFlatIP``) for the top-K;
* **matcher** -- :meth:`SequenceMatcher.update` on that top-K (random maps scatter the top-K over the
  whole map, so most stored entries fall outside the speed cone);
* **matcher, clustered top-K** -- the worst case for the matcher: every query's top-K packed within
  +-K/2 map keyframes of its position (a corridor-like place map where all neighbours look alike).

1M places at 2048-d float32 would need 8 GiB: 1M uses ``--dim-1m`` (default 256, e.g. after PCA) with the
same flat index. faiss runs with ``--threads`` threads (default 1: the machine is shared).

    python benchmarks/sequence_speed.py                       # 10k, 100k, 1M; L = 10 and 20
    python benchmarks/sequence_speed.py --sizes 10k --lengths 5,10,20,40
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from tscm_ros.sequence import SequenceConfig, SequenceMatcher

CHUNK = 50_000
NS_PER_S = 1_000_000_000


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def build_index(size: int, dim: int, rng: np.random.Generator) -> tuple[faiss.Index, np.ndarray]:
    """Flat index of ``size`` random unit vectors (added in chunks); returns it and the first 2000 rows."""
    index = faiss.IndexFlatIP(dim)
    head = None
    for start in range(0, size, CHUNK):
        chunk = rng.standard_normal((min(CHUNK, size - start), dim), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        index.add(chunk)
        if head is None:
            head = chunk[:2000].copy()
    return index, head


def percentiles(values: list[float]) -> str:
    ms = 1000 * np.asarray(values)
    return f"{np.median(ms):.2f} / {np.percentile(ms, 95):.2f}"


def run_size(
    size: int, dim: int, lengths: list[int], keyframes: int, k: int, rng: np.random.Generator
) -> list:
    started = time.perf_counter()
    index, head = build_index(size, dim, rng)
    build_s = time.perf_counter() - started
    truth = 100 + 1.3 * np.arange(keyframes)  # a revisit at 1.3x
    clean = head[np.round(truth).astype(int)]
    queries = clean + 1.5 * rng.standard_normal(clean.shape).astype(np.float32) / np.sqrt(dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    retrieval, sims, ids = [], [], []
    for q in queries:
        t = time.perf_counter()
        s, i = index.search(q[None, :], k)
        retrieval.append(time.perf_counter() - t)
        sims.append(s[0])
        ids.append(i[0])
    rows = []
    for length in lengths:
        config = SequenceConfig(length=length, candidates_per_keyframe=k)
        scattered, clustered, correct = [], [], 0
        matcher, worst = SequenceMatcher(config), SequenceMatcher(config)
        for n in range(keyframes):
            t = time.perf_counter()
            out = matcher.update(
                keyframe_index=n, stamp_ns=n * NS_PER_S, place_ids=ids[n], place_keyframes=ids[n],
                similarities=sims[n],
            )  # fmt: skip
            scattered.append(time.perf_counter() - t)
            correct += n >= length - 1 and abs(out[0].keyframe_index - truth[n]) <= 1
            packed = np.clip(int(truth[n]) + rng.permutation(np.arange(-k // 2, k - k // 2)), 0, None)
            t = time.perf_counter()
            worst.update(
                keyframe_index=n, stamp_ns=n * NS_PER_S, place_ids=packed, place_keyframes=packed,
                similarities=np.sort(rng.random(k))[::-1],
            )  # fmt: skip
            clustered.append(time.perf_counter() - t)
        rows.append(
            f"| {size:,} | {dim} | {build_s:.1f} | {k} | {length} | {len(config.speeds())} | "
            f"{percentiles(retrieval)} | {percentiles(scattered)} | {percentiles(clustered)} | "
            f"{correct / (keyframes - length + 1):.2f} |"
        )
    del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10k,100k,1m")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dim-1m", type=int, default=256, help="dimension from 1M places on (memory)")
    parser.add_argument("--lengths", default="10,20")
    parser.add_argument("--keyframes", type=int, default=200, help="query keyframes timed per size")
    parser.add_argument("-k", type=int, default=SequenceConfig().candidates_per_keyframe)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    lengths = [int(v) for v in args.lengths.split(",")]
    print(f"faiss threads: {args.threads}; times in ms, median / p95 over {args.keyframes} query keyframes\n")
    header = (
        "| places | dim | build s | K | L | speeds | retrieval (flat) | matcher | matcher, clustered top-K "
        "| seq. top-1 ok |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in (parse_size(s) for s in args.sizes.split(",")):
        dim = args.dim if size < 1_000_000 else args.dim_1m
        for row in run_size(size, dim, lengths, args.keyframes, args.k, rng):
            print(row, flush=True)


if __name__ == "__main__":
    main()
