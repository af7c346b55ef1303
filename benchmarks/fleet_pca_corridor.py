"""Recall cost of the fleet map's PCA projection (2048 -> 256) on Corridor (prints a table; not a test).

Descriptors: the seeded, untrained student (``Describer(None)``, the demo's default model) on CPU.
Database: the 111 Corridor reference images; queries: the 111 query images; ground truth from
``load_dataset("corridor:DIR")``.

A projection is "learned from a map". Corridor's map has only 111 keyframes, fewer than the 256
components, so the map the PCA is fitted on holds ``--views`` keyframes per reference place: the
reference image plus shifted/scaled crops and a mirrored copy (a robot records many frames per place).
A second projection is fitted on images that are not Corridor at all (``../shared/data/vpr_triplets``
and ``toy_unlabelled``, with the same kind of views), i.e. a projection learned on another map.

Rows: R@1/R@5 of exact full-dimension search; of the reduced (uncentred PCA) inner product; and of the
reduced search re-ranked exactly on the full descriptor over its top C candidates, as the server does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tscm_ros.data.registry import load_dataset  # noqa: E402
from tscm_ros.describer import Describer, create_describer  # noqa: E402
from tscm_ros.evaluation.metrics import recall_at_n  # noqa: E402
from tscm_ros.fleet import PcaProjection  # noqa: E402
from tscm_ros.image_files import IMAGE_SUFFIXES, read_rgb  # noqa: E402


def views(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The image, a mirrored copy and random crops of 75-95 % of its size (at most ``count`` in all)."""
    out = [image, image[:, ::-1].copy()]
    h, w = image.shape[:2]
    while len(out) < count:
        scale = rng.uniform(0.75, 0.95)
        ch, cw = int(h * scale), int(w * scale)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(np.ascontiguousarray(image[y : y + ch, x : x + cw]))
    return out[:count]


def describe_views(describer: Describer, files: list[Path], count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chunks = []
    for path in files:
        chunks.append(describer.describe(views(read_rgb(path), count, rng)))
    return np.concatenate(chunks)


def rank(
    db: np.ndarray, queries: np.ndarray, pca: PcaProjection | None, rerank: int | None, k: int = 5
) -> np.ndarray:
    if pca is None:
        return np.argsort(-(queries @ db.T), axis=1)[:, :k]
    reduced = pca.project(queries) @ pca.project(db).T
    order = np.argsort(-reduced, axis=1)
    if rerank is None:
        return order[:, :k]
    out = []
    for q, cand in zip(queries, order[:, :rerank], strict=True):
        exact = db[cand] @ q
        out.append(cand[np.argsort(-exact)][:k])
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--corridor", type=Path, default=shared / "corridor")
    parser.add_argument(
        "--other", type=Path, nargs="*", default=[shared / "vpr_triplets", shared / "toy_unlabelled"]
    )
    parser.add_argument("--reduced", type=int, default=256)
    parser.add_argument("--views", type=int, default=4, help="keyframes per reference place in the PCA map")
    parser.add_argument("--rerank", default="5,10,25", help="re-rank depths C")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="folder to keep the computed descriptors in (reruns)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dataset = load_dataset(f"corridor:{args.corridor}")
    positives = dataset.positives["gt"]
    describer = create_describer(None, device="cpu", seed=0, num_threads=args.threads)
    cache = args.cache / f"corridor_views{args.views}.npz" if args.cache else None
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        db, queries, corridor_map = stored["db"], stored["queries"], stored["corridor_map"]
    else:
        db = describer.describe([read_rgb(p) for p in dataset.database])
        queries = describer.describe([read_rgb(p) for p in dataset.queries])
        corridor_map = describe_views(describer, list(dataset.database), args.views, seed=1)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, db=db, queries=queries, corridor_map=corridor_map)
    other_files = sorted(
        p
        for folder in args.other
        if folder.is_dir()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    other_views = max(2, -(-(args.reduced + 64) // max(1, len(other_files))))
    other_map = describe_views(describer, other_files, other_views, seed=2) if other_files else None
    projections = {
        f"PCA fitted on the Corridor map ({len(corridor_map)} keyframes)": PcaProjection.fit(
            corridor_map, args.reduced
        )
    }
    if other_map is not None and len(other_map) > args.reduced:
        projections[f"PCA fitted on other images ({len(other_map)} keyframes)"] = PcaProjection.fit(
            other_map, args.reduced
        )
    print(f"# Corridor: {len(db)} reference, {len(queries)} queries; untrained seeded student "
          f"(Describer(None)), {db.shape[1]}-d; PCA {args.reduced} (uncentred projection)")  # fmt: skip
    print(f"  {'search':<64} {'R@1':>6} {'R@5':>6}")

    def row(label: str, ranked: np.ndarray) -> None:
        recall = recall_at_n(ranked, positives, (1, 5))
        print(f"  {label:<64} {recall[1]:6.3f} {recall[5]:6.3f}")

    row("full 2048-d exact", rank(db, queries, None, None))
    for name, pca in projections.items():
        print(f"  -- {name}: keeps {pca.explained_variance:.3f} of its variance")
        row(f"PCA-{args.reduced}, no re-ranking", rank(db, queries, pca, None))
        for c in (int(v) for v in args.rerank.split(",")):
            row(f"PCA-{args.reduced} top-{c} re-ranked exactly on 2048-d", rank(db, queries, pca, c))
    print(f"# {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
