"""Evaluation: recall@N / mAP / PR-AP against hand-computed cases, dataset loaders, tscm_evaluate CLI."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tscm_ros.cli.evaluate import main as evaluate_main
from tscm_ros.data.benchmarks import read_vprbench_ground_truth
from tscm_ros.data.dataset import DatasetError, RetrievalDataset
from tscm_ros.data.registry import load_dataset, register_dataset
from tscm_ros.evaluation import metrics


# ---------------------------------------------------------------------------- recall / mAP
def test_recall_at_n_hand_computed() -> None:
    ranked = np.array([[3, 1, 2, 0], [0, 4, 5, 6], [2, 7, 8, -1], [1, 2, 3, 4], [5, 6, 7, 8]])
    positives = [np.array([1]), np.array([9]), np.array([8, 2]), np.array([], int), np.array([8])]
    # valid: 0 (hit at rank 2), 1 (never), 2 (hit at rank 1), 4 (hit at rank 4); query 3 has no positive
    recall = metrics.recall_at_n(ranked, positives, ns=(1, 2, 3, 4, 20))
    assert recall == {1: 0.25, 2: 0.5, 3: 0.5, 4: 0.75, 20: 0.75}


def test_recall_ignores_padding_and_checks_shapes() -> None:
    assert metrics.recall_at_n(np.array([[-1, -1]]), [np.array([-1])], ns=(1,)) == {1: 0.0}
    assert np.isnan(metrics.recall_at_n(np.array([[0]]), [np.array([], int)], ns=(1,))[1])
    with pytest.raises(ValueError, match="positive lists"):
        metrics.recall_at_n(np.zeros((2, 3), int), [np.array([0])])
    with pytest.raises(ValueError, match=">= 1"):
        metrics.recall_at_n(np.zeros((1, 3), int), [np.array([0])], ns=(0,))


def test_mean_average_precision_hand_computed() -> None:
    ranked = np.array([[1, 0, 2], [0, 1, 2]])
    positives = [np.array([0, 2]), np.array([5])]
    # query 0: hits at ranks 2 and 3 -> (1/2 + 2/3) / 2 = 7/12; query 1: 0
    assert metrics.mean_average_precision(ranked, positives) == pytest.approx((7 / 12 + 0) / 2)


def test_exact_search_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    sims, idx = metrics.exact_search(db, q, 3)
    order = np.argsort(-(q @ db.T), axis=1)[:, :3]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(sims, np.take_along_axis(q @ db.T, order, 1), rtol=1e-5)


def test_exact_search_excludes_one_entry_per_query() -> None:
    rng = np.random.default_rng(1)
    db = rng.standard_normal((6, 4)).astype(np.float32)
    q = db[[0, 3, 5]].copy()  # each query is a copy of a database entry: rank 1 without exclusion
    exclude = np.array([0, 3, -1])
    sims, idx = metrics.exact_search(db, q, 3, exclude=exclude)
    full = np.argsort(-(q @ db.T), axis=1)
    np.testing.assert_array_equal(idx[0], full[0, 1:4])
    np.testing.assert_array_equal(idx[1], full[1, 1:4])
    np.testing.assert_array_equal(idx[2], full[2, :3])  # -1: nothing excluded, self stays at rank 1
    np.testing.assert_allclose(sims, np.take_along_axis(q @ db.T, idx, 1), rtol=1e-5)
    # k = database size: the excluded entry leaves one padded (-1) slot at the end
    _, idx = metrics.exact_search(db, q, 6, exclude=exclude)
    assert idx[0, -1] == -1 and 0 not in idx[0] and sorted(idx[0, :5]) == [1, 2, 3, 4, 5]
    assert sorted(idx[2]) == list(range(6))
    with pytest.raises(ValueError, match="exclude has 2 entries"):
        metrics.exact_search(db, q, 3, exclude=np.array([0, 1]))


def _brute_force_leave_one_out(db, q, own, positives, ns, k):
    """Numpy reference: cosine ranking that skips each query's own database entry, recall@N and mAP@K."""
    sims = q @ db.T
    for row, index in enumerate(own):
        if index >= 0:
            sims[row, index] = -np.inf
    ranked = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    recalls, aps = {n: [] for n in ns}, []
    for row, pos in enumerate(positives):
        if len(pos) == 0:
            continue
        hit = np.isin(ranked[row], pos)
        for n in ns:
            recalls[n].append(hit[:n].any())
        precision = np.cumsum(hit) / np.arange(1, k + 1)
        aps.append((precision * hit).sum() / min(len(pos), k))
    return ranked, {n: float(np.mean(v)) for n, v in recalls.items()}, float(np.mean(aps))


def test_leave_one_out_dataset_never_retrieves_itself(tmp_path: Path) -> None:
    """role=both rows (tscm_export_dataset's default): tscm_evaluate and training validation both match a
    numpy brute force that skips self-matches (without the exclusion R@1 would be 0 for every model)."""
    from tscm_ros.data.csv_dataset import load_csv_dataset
    from tscm_ros.pipelines.evaluate import evaluate
    from tscm_ros.training.evaluate import retrieval_metrics

    rows = [f"f{i}.png,{i * 3.0},0,{'database' if i % 7 == 0 else 'both'}" for i in range(40)]
    rows += [f"q{i}.png,{i * 9.0 + 1},0,query" for i in range(5)]
    csv_path = tmp_path / "loop.csv"
    csv_path.write_text("image,x,y,role\n" + "\n".join(rows) + "\n")
    ds = load_csv_dataset(csv_path)
    own = ds.query_database_index
    assert len(ds.database) == 40 and len(ds.queries) == 39 and (own >= 0).sum() == 34
    rng = np.random.default_rng(3)
    db = rng.standard_normal((40, 16)).astype(np.float32)
    q = rng.standard_normal((39, 16)).astype(np.float32)
    q[own >= 0] = db[own[own >= 0]]  # a both-row query has exactly its database descriptor
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ns = (1, 5, 10)
    results = evaluate(db, q, ds, ns, None)
    training = retrieval_metrics(db, q, ds, ns)
    for protocol in ("10m", "25m"):
        ranked, recalls, mean_ap = _brute_force_leave_one_out(db, q, own, ds.positives[protocol], ns, 10)
        assert not np.any(ranked == own[:, None])
        got = results[protocol]
        assert {int(n): v for n, v in got["recall"].items()} == pytest.approx(recalls)
        assert got["map_at_k"] == pytest.approx(mean_ap)
        assert {n: training[f"{protocol}/R@{n}"] for n in ns} == pytest.approx(recalls)
        assert training[f"{protocol}/mAP"] == pytest.approx(mean_ap)
        top1 = metrics.retrieval_pr_curve(
            np.take_along_axis(q @ db.T, ranked[:, :1], 1)[:, 0], ranked[:, 0], ds.positives[protocol]
        )
        assert got["pr"]["average_precision"] == pytest.approx(top1.average_precision)
    # sanity: the same data without the exclusion retrieves itself first (the bug this guards against)
    _, unexcluded = metrics.exact_search(db, q, 1)
    assert np.all(unexcluded[own >= 0, 0] == own[own >= 0])


# ---------------------------------------------------------------------------- PR / AP
def test_precision_recall_curve_hand_computed() -> None:
    pr = metrics.precision_recall_curve(
        np.array([0.6, 0.9, 0.7, 0.8]), np.array([0, 1, 1, 0], bool), n_positive=3
    )
    np.testing.assert_allclose(pr.thresholds, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(pr.precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(pr.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert pr.average_precision == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)  # 5/9
    assert pr.max_f1 == pytest.approx(2 / 3)
    assert pr.recall_at_100_precision == pytest.approx(1 / 3)


def test_precision_recall_curve_ties_and_errors() -> None:
    pr = metrics.precision_recall_curve(np.array([0.5, 0.5]), np.array([True, False]), n_positive=1)
    assert list(pr.precision) == [0.5] and list(pr.recall) == [1.0] and pr.average_precision == 0.5
    perfect = metrics.precision_recall_curve(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0], bool), 2)
    assert perfect.average_precision == pytest.approx(1.0) and perfect.recall_at_100_precision == 1.0
    with pytest.raises(ValueError, match="n_positive"):
        metrics.precision_recall_curve(np.array([0.5]), np.array([True]), n_positive=0)


def test_retrieval_pr_counts_queries_without_positives_as_negatives() -> None:
    sims = np.array([0.9, 0.8, 0.7])
    top1 = np.array([4, 1, 2])
    positives = [np.array([4]), np.array([], int), np.array([3])]
    pr = metrics.retrieval_pr_curve(sims, top1, positives)
    # accepted at 0.9: TP; at 0.8: FP (query has no positive); at 0.7: FP (wrong); 2 queries have positives
    np.testing.assert_allclose(pr.precision, [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(pr.recall, [0.5, 0.5, 0.5])
    assert pr.average_precision == pytest.approx(0.5)


def test_loop_closure_pr_with_positions_and_pairs() -> None:
    # frames 0..4 go out along x, frames 5..9 come back over the same points (x = 4..0)
    x = np.r_[np.arange(5), np.arange(4, -1, -1)].astype(float)
    positions = np.c_[x, np.zeros(10)]
    queries, matches, sims = np.array([6, 7, 8, 9]), np.array([3, 0, 1, 2]), np.array([0.9, 0.8, 0.7, 0.6])
    # correct: 6->3 (x 3 vs 3), 8->1 (1 vs 1); wrong: 7->0 (2 vs 0), 9->2 (0 vs 2)
    # frames with a true loop (earlier frame > 2 frames back within 0.5 m): 6 (->3), 7 (->2), 8 (->1), 9 (->0)
    # frame 5 (x=4) only has frame 4 one step back, which the exclusion removes
    pr = metrics.loop_closure_pr_curve(
        queries, matches, sims, positions=positions, radius_m=0.5, exclusion_frames=2
    )
    assert pr.n_positive == 4
    np.testing.assert_allclose(pr.precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(pr.recall, [0.25, 0.25, 0.5, 0.5])
    pairs = [(6, 3), (7, 2), (8, 1), (9, 0)]
    by_pairs = metrics.loop_closure_pr_curve(queries, matches, sims, gt_pairs=pairs)
    np.testing.assert_allclose(by_pairs.precision, pr.precision)
    with pytest.raises(ValueError, match="at most one"):
        metrics.loop_closure_pr_curve([1, 1], [0, 0], [0.5, 0.4], gt_pairs=pairs)


def test_loop_closure_match_inside_exclusion_is_not_correct() -> None:
    # frame 3 (x=20.5) matches frame 2 (x=20), within the radius but only one frame back: with
    # exclusion_frames=2 that is no loop, so the detection is a false positive, not a true one
    positions = [[0, 0], [10, 0], [20, 0], [20.5, 0]]
    pr = metrics.loop_closure_pr_curve([3], [2], [0.9], positions=positions, radius_m=1.0, exclusion_frames=2)
    assert pr.n_positive == 0
    np.testing.assert_allclose(pr.precision, [0.0])


# ---------------------------------------------------------------------------- loaders
def test_corridor_csv_loader(corridor_dir: Path) -> None:
    ds = load_dataset(f"corridor:{corridor_dir}")
    assert isinstance(ds, RetrievalDataset)
    assert len(ds.database) == 111 and len(ds.queries) == 111
    assert ds.database[0] == corridor_dir / "ref" / "0000000.jpg"
    assert ds.queries[110] == corridor_dir / "query" / "0000110.jpg"
    gt = ds.positives["gt"]
    assert list(gt[0]) == [0, 1, 2] and list(gt[5]) == [3, 4, 5, 6, 7] and list(gt[110]) == [108, 109, 110]
    for i, positives in enumerate(gt):  # SOURCE.md: query i matches ref j iff |i - j| <= 2
        assert set(positives) == {j for j in range(111) if abs(i - j) <= 2}


def test_vprbench_npy_loader_agrees_with_csv(corridor_dir: Path) -> None:
    npy = load_dataset(f"vprbench:{corridor_dir}")
    csv = load_dataset(f"corridor:{corridor_dir}")
    assert npy.database == csv.database and npy.queries == csv.queries
    for a, b in zip(npy.positives["gt"], csv.positives["gt"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_vprbench_reader_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "ground_truth_new.npy"
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, {"descr": "|O", "fortran_order": False, "shape": (1, 2)})
        stream.write(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DatasetError, match="refusing"):
        read_vprbench_ground_truth(path)
    assert not (tmp_path / "pwned").exists()


def test_place_folders_loader(shared_dir: Path) -> None:
    root = shared_dir / "data" / "vpr_triplets"
    ds = load_dataset(f"folders:{root}")
    assert len(ds.queries) == 10 and len(ds.database) == 20
    for query, positives in zip(ds.queries, ds.positives["gt"], strict=True):
        place = query.relative_to(root).parts[0]
        assert query.relative_to(root).parts[1] == "i0"
        assert len(positives) == 2
        assert {ds.database[i].relative_to(root).parts[0] for i in positives} == {place}
        others = set(range(20)) - set(positives)
        assert all(ds.database[i].relative_to(root).parts[0] != place for i in others)


def test_place_folders_without_csv(tmp_path: Path) -> None:
    for place, count in (("a", 3), ("b", 1), ("c", 2)):
        (tmp_path / place / "sub").mkdir(parents=True)
        for i in range(count):
            (tmp_path / place / "sub" / f"{i}.png").write_bytes(b"")
    ds = load_dataset(f"folders:{tmp_path}")
    assert [q.parent.parent.name for q in ds.queries] == ["a", "c"]
    assert [p.parent.parent.name for p in ds.database] == ["a", "a", "b", "c"]
    assert [list(p) for p in ds.positives["gt"]] == [[0, 1], [3]]


def test_utm_csv_loader(tmp_path: Path) -> None:
    rows = [
        "split,path,easting,northing",
        "db,db/0.jpg,100.0,200.0",
        "db,db/1.jpg,110.0,200.0",
        "db,db/2.jpg,140.0,200.0",
        "query,q/0.jpg,104.0,203.0",  # 5 m from db0, ~7.6 m from db1, 36 m from db2
        "query,q/1.jpg,500.0,500.0",
    ]
    csv_path = tmp_path / "run.csv"
    csv_path.write_text("\n".join(rows))
    ds = load_dataset(f"utm-csv:{csv_path}:6")
    assert list(ds.positives) == ["6m"]
    assert [list(p) for p in ds.positives["6m"]] == [[0], []]
    assert ds.database[1] == tmp_path / "db" / "1.jpg"
    np.testing.assert_allclose(ds.query_utm[0], [104.0, 203.0])
    default = load_dataset(f"utm-csv:{csv_path}")
    assert [list(p) for p in default.positives["25m"]] == [[0, 1], []]
    csv_path.write_text("split,path,easting,northing\ntrain,x.jpg,1,2\n")
    with pytest.raises(DatasetError, match="split must be db or query"):
        load_dataset(f"utm-csv:{csv_path}")


def test_registry() -> None:
    marker = RetrievalDataset("custom", [Path("a")], [Path("b")], {"gt": [np.array([0])]})
    register_dataset("custom-test", lambda argument: marker if argument == "xyz" else None)
    assert load_dataset("custom-test:xyz") is marker
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        load_dataset("nosuchkind:/tmp")
    with pytest.raises(DatasetError, match="KIND:PATH"):
        load_dataset("corridor")
    with pytest.raises(ValueError):
        register_dataset("bad:kind", lambda a: marker)


# ---------------------------------------------------------------------------- CLI
def test_cli_on_precomputed_descriptors(tmp_path: Path, corridor_dir: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((111, 16)).astype(np.float32)
    queries = database + 0.01 * rng.standard_normal((111, 16)).astype(np.float32)
    queries[60:] = rng.standard_normal((51, 16))  # queries 60..110 look like nothing in particular
    far = np.array([q for q in range(60, 111)])
    # make those queries' top-1 a ref far from them: copy ref (q + 50) % 111 (|i - j| > 2 for all)
    queries[far] = database[(far + 50) % 111] + 0.01 * rng.standard_normal((51, 16))
    np.save(tmp_path / "db.npy", database)
    np.save(tmp_path / "q.npy", queries)
    out = tmp_path / "eval"
    descriptors = f"{tmp_path / 'db.npy'},{tmp_path / 'q.npy'}"
    code = evaluate_main(
        ["--dataset", f"corridor:{corridor_dir}", "--descriptors", descriptors, "--out", str(out)]
    )
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    gt = report["protocols"]["gt"]
    assert gt["recall"]["1"] == pytest.approx(60 / 111)
    assert gt["queries_with_positives"] == 111
    # the 60 correct top-1s are near-copies (similarity ~1), the wrong ones too: AP is not trivially 1
    assert 0.0 < gt["pr"]["average_precision"] <= 1.0
    assert (out / "pr_curve.png").stat().st_size > 1000 and (out / "recall_at_n.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "| gt | 0.5405 |" in printed


def test_cli_rejects_bad_descriptors(tmp_path: Path, corridor_dir: Path, capsys) -> None:
    np.save(tmp_path / "db.npy", np.ones((10, 4), np.float32))
    np.save(tmp_path / "q.npy", np.ones((111, 4), np.float32))
    descriptors = f"{tmp_path / 'db.npy'},{tmp_path / 'q.npy'}"
    code = evaluate_main(
        ["--dataset", f"corridor:{corridor_dir}", "--descriptors", descriptors, "--out", str(tmp_path)]
    )
    assert code == 1
    assert "expected (111, D) database" in capsys.readouterr().err
    assert evaluate_main(["--dataset", f"corridor:{corridor_dir}", "--out", str(tmp_path / "o")]) == 1
    assert "--model" in capsys.readouterr().err


def _assert_one_line_error(capsys, *fragments: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tscm_evaluate: ") and "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_empty_ground_truth_is_an_error(tmp_path: Path, capsys) -> None:
    # corridor layout whose ground_truth.csv has a header and no rows: 0 queries
    root = tmp_path / "empty"
    (root / "ref").mkdir(parents=True)
    (root / "query").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "ref" / "0.png")
    (root / "ground_truth.csv").write_text("query_index,query_file,positive_ref_indices,positive_ref_files\n")
    out = tmp_path / "out"
    descriptors = tmp_path / "d.npy"
    np.save(descriptors, np.ones((1, 4), np.float32))
    both = f"{descriptors},{descriptors}"
    code = evaluate_main(["--dataset", f"corridor:{root}", "--descriptors", both, "--out", str(out)])
    assert code == 1
    _assert_one_line_error(capsys, "0 queries")
    assert not out.exists()
    # queries exist but none has a positive within the radius: every metric would be NaN
    csv_path = tmp_path / "far.csv"
    csv_path.write_text("split,path,easting,northing\ndb,a.png,0,0\nquery,b.png,500,500\n")
    code = evaluate_main(["--dataset", f"utm-csv:{csv_path}:10", "--descriptors", both, "--out", str(out)])
    assert code == 1
    _assert_one_line_error(capsys, "empty ground truth", "10m")


@pytest.mark.parametrize("kind", ["csv", "utm-csv", "corridor"])
def test_cli_binary_csv_is_a_one_line_error(tmp_path: Path, capsys, kind: str) -> None:
    blob = bytes(range(256)) * 8  # not UTF-8
    if kind == "corridor":
        from PIL import Image

        (tmp_path / "ref").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "ref" / "0.png")
        (tmp_path / "ground_truth.csv").write_bytes(blob)
        spec = f"corridor:{tmp_path}"
    else:
        (tmp_path / "data.csv").write_bytes(blob)
        spec = f"{kind}:{tmp_path / 'data.csv'}"
    code = evaluate_main(["--dataset", spec, "--untrained", "--out", str(tmp_path / "out")])
    assert code == 1
    _assert_one_line_error(capsys, "UTF-8")
