"""Pittsburgh .mat and CSV datasets, training-tuple mining (no network needed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io
from scipy.spatial.distance import cdist

from tscm_ros.data.csv_dataset import CsvDatasetError, load_csv_dataset
from tscm_ros.data.mining import HardNegativeMiner
from tscm_ros.data.pittsburgh import (
    PittsburghFormatError,
    load_pittsburgh,
    read_db_struct,
    write_pittsburgh_mat,
)

DB_NAMES = [
    "000/000000_pitch1_yaw1.jpg",
    "000/000001_pitch1_yaw2.jpg",
    "001/001000_pitch2_yaw12.jpg",
    "x.jpg",
]
Q_NAMES = ["004/004828_pitch2_yaw11.jpg", "q.png"]
DB_UTM = np.array(
    [[585001.0, 4477000.0], [585008.0, 4477000.0], [585020.0, 4477000.0], [585100.0, 4477000.0]]
)
Q_UTM = np.array([[585000.0, 4477000.0], [585099.0, 4477003.0]])


@pytest.mark.parametrize("layout", ["cell", "char"])
def test_pittsburgh_mat_layouts(tmp_path, layout):
    mat = tmp_path / "structure" / "pitts30k_val.mat"
    kwargs = dict(database=DB_NAMES, database_utm=DB_UTM, queries=Q_NAMES, query_utm=Q_UTM, layout=layout)
    write_pittsburgh_mat(mat, which_set="val", **kwargs)
    raw = scipy.io.loadmat(mat)["dbStruct"].item()
    assert np.asarray(raw[2]).shape == (2, 4)  # stored 2xN like the real files
    assert (np.asarray(raw[1]).dtype == object) == (layout == "cell")
    ds = load_pittsburgh(mat)
    assert ds.database == [tmp_path / "database" / n for n in DB_NAMES]
    assert ds.queries == [tmp_path / "query" / n for n in Q_NAMES]
    np.testing.assert_array_equal(ds.database_utm, DB_UTM)
    np.testing.assert_array_equal(ds.query_utm, Q_UTM)
    assert ds.extra["which_set"] == "val"
    assert ds.extra["non_triv_pos_dist"] == 10.0 and ds.extra["pos_dist_thr"] == 25.0
    # query 0: db at 1 m, 8 m (10 m) and 20 m (25 m); query 1: db at sqrt(10) m
    assert [p.tolist() for p in ds.positives["10m"]] == [[0, 1], [3]]
    assert [p.tolist() for p in ds.positives["25m"]] == [[0, 1, 2], [3]]


def test_pittsburgh_root_and_errors(tmp_path):
    mat = write_pittsburgh_mat(
        tmp_path / "a.mat",
        which_set="test",
        database=DB_NAMES,
        database_utm=DB_UTM,
        queries=Q_NAMES,
        query_utm=Q_UTM,
    )
    ds = load_pittsburgh(mat, tmp_path / "pitts", query_dir=tmp_path / "queries_real")
    assert ds.database[0] == tmp_path / "pitts" / "database" / DB_NAMES[0]
    assert ds.queries[1] == tmp_path / "queries_real" / "q.png"
    with pytest.raises(FileNotFoundError, match="database"):
        load_pittsburgh(mat, tmp_path, check_images=True)
    scipy.io.savemat(tmp_path / "bad.mat", {"other": np.zeros(3)})
    with pytest.raises(PittsburghFormatError, match="dbStruct"):
        read_db_struct(tmp_path / "bad.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(PittsburghFormatError):
        read_db_struct(tmp_path / "junk.mat")
    with pytest.raises(FileNotFoundError):
        read_db_struct(tmp_path / "missing.mat")


def test_csv_dataset(tmp_path):
    csv_path = tmp_path / "set" / "data.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "image,easting,northing,heading,split,role\n"
        "db/0.jpg,0,0,90,train,database\n"
        "db/1.jpg,9,0,90,train,database\n"
        "db/2.jpg,20,0,,train,database\n"
        "q/0.jpg,0.5,0,91,train,query\n"
        "db/9.jpg,500,0,0,test,database\n"
        "q/9.jpg,500,3,0,test,query\n"
    )
    train = load_csv_dataset(csv_path, "train")
    assert train.database == [csv_path.parent / "db" / f"{i}.jpg" for i in range(3)]
    assert train.queries == [csv_path.parent / "q" / "0.jpg"]
    assert train.positives["10m"][0].tolist() == [0, 1]
    assert train.positives["25m"][0].tolist() == [0, 1, 2]
    assert np.isnan(train.extra["database_heading"][2]) and train.extra["query_heading"][0] == 91
    test = load_csv_dataset(csv_path, "test")
    assert len(test.database) == 1 and test.positives["10m"][0].tolist() == [0]
    everything = load_csv_dataset(csv_path)
    assert len(everything.database) == 4 and len(everything.queries) == 2
    with pytest.raises(CsvDatasetError, match="no rows with split='val'"):
        load_csv_dataset(csv_path, "val")


def test_csv_default_role_is_leave_one_out(tmp_path):
    csv_path = tmp_path / "loop.csv"
    rows = "".join(f"f{i}.png,{i * 4.0},0\n" for i in range(5))
    csv_path.write_text("image,x,y\n" + rows)
    ds = load_csv_dataset(csv_path)
    assert len(ds.database) == len(ds.queries) == 5
    # row 2 at 8 m: rows 0..4 lie at 8, 4, 0, 4, 8 m; its own entry is not a positive
    assert ds.positives["10m"][2].tolist() == [0, 1, 3, 4]
    assert ds.positives["10m"][0].tolist() == [1, 2]
    with pytest.raises(CsvDatasetError, match="no 'split' values"):
        load_csv_dataset(csv_path, "train")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,x,y\na.jpg,0,0\n", "'image' column"),
        ("image,lat,lon\na.jpg,0,0\n", "'easting,northing' or 'x,y'"),
        ("image,x,y\na.jpg,zero,0\n", ":2: column 'x' is not a number"),
        ("image,x,y,split\na.jpg,0,0,training\n", "split 'training'"),
        ("image,x,y,role\na.jpg,0,0,map\n", "role 'map'"),
        ("image,x,y,role\na.jpg,0,0,query\n", "at least one database"),
        ("image,x,y\n", "no data rows"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CsvDatasetError, match=message):
        load_csv_dataset(path)


def _random_layout(seed: int = 0):
    rng = np.random.default_rng(seed)
    db_utm = rng.uniform(0, 120, size=(400, 2))
    q_utm = rng.uniform(0, 120, size=(60, 2))
    return rng, db_utm, q_utm


def test_mining_respects_radii_and_margin():
    rng, db_utm, q_utm = _random_layout()
    miner = HardNegativeMiner(db_utm, q_utm, num_negatives=5, negative_pool=50, margin=0.1)
    dist = cdist(q_utm, db_utm)
    for q in range(len(q_utm)):
        assert np.array_equal(miner.positives[q], np.flatnonzero(dist[q] <= 10.0))
    assert np.array_equal(miner.trainable_queries, np.flatnonzero((dist <= 10.0).any(axis=1)))
    db_emb = rng.normal(size=(400, 16)).astype(np.float32)
    db_emb /= np.linalg.norm(db_emb, axis=1, keepdims=True)
    q_emb = rng.normal(size=(60, 16)).astype(np.float32)
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    tuples = miner.mine(db_emb, q_emb, np.random.default_rng(1))
    assert len(tuples) > 0
    for t in tuples:
        assert dist[t.query, t.positive] <= 10.0
        assert np.all(dist[t.query, t.negatives] > 25.0)
        assert 1 <= len(t.negatives) <= 5 and len(np.unique(t.negatives)) == len(t.negatives)
        d_pos_all = np.linalg.norm(db_emb[miner.positives[t.query]] - q_emb[t.query], axis=1)
        d_pos = np.linalg.norm(db_emb[t.positive] - q_emb[t.query])
        assert np.isclose(d_pos, d_pos_all.min(), atol=1e-6)  # nearest positive in embedding space
        d_neg = np.linalg.norm(db_emb[t.negatives] - q_emb[t.query], axis=1)
        assert np.all(d_neg < d_pos + np.sqrt(0.1) + 1e-6) and np.all(np.diff(d_neg) >= -1e-6)
        assert np.array_equal(miner.negative_cache[t.query, : len(t.negatives)], t.negatives)


def test_mining_keeps_previous_hard_negatives_and_skips_easy_queries():
    db_utm = np.array([[0.0, 0.0]] + [[100.0 + i, 0.0] for i in range(20)])
    q_utm = np.array([[1.0, 0.0]])
    miner = HardNegativeMiner(db_utm, q_utm, num_negatives=3, negative_pool=2, margin=0.1)
    emb = np.zeros((21, 4), np.float32)
    emb[0] = [1, 0, 0, 0]  # the positive, identical to the query
    emb[1:, 1] = 1  # every negative at distance sqrt(2) > 0 + sqrt(0.1): nothing violates
    q_emb = np.array([[1, 0, 0, 0]], np.float32)
    assert miner.mine(emb, q_emb, np.random.default_rng(0)) == []
    # make negative 7 confusable; a pool of 2 random candidates will rarely contain it, the cache must keep it
    miner.negative_cache[0, 0] = 7
    emb[7] = [0.99, 0.141, 0, 0]
    for seed in range(5):
        tuples = miner.mine(emb, q_emb, np.random.default_rng(seed))
        assert [t.negatives.tolist() for t in tuples] == [[7]]
    state = miner.state_dict()
    fresh = HardNegativeMiner(db_utm, q_utm, num_negatives=3, negative_pool=2)
    fresh.load_state_dict(state)
    assert np.array_equal(fresh.negative_cache, miner.negative_cache)
    with pytest.raises(ValueError, match="negative cache shape"):
        HardNegativeMiner(db_utm, q_utm, num_negatives=4).load_state_dict(state)


def test_mining_from_leave_one_out_csv(tmp_path):
    csv_path = tmp_path / "loop.csv"
    csv_path.write_text("image,x,y\n" + "".join(f"f{i}.png,{i * 3.0},0\n" for i in range(40)))
    ds = load_csv_dataset(csv_path)
    miner = HardNegativeMiner.from_dataset(ds, num_negatives=4, negative_pool=100)
    emb = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    for t in miner.mine(emb, emb, np.random.default_rng(0)):
        assert t.positive != t.query and 0 < abs(t.positive - t.query) * 3.0 <= 10.0
        assert np.all(np.abs(t.negatives - t.query) * 3.0 > 25.0)


@pytest.mark.parametrize(
    ("name", "arch"), [("train_teacher_pitts30k", "teacher"), ("distill_student_pitts30k", "student")]
)
def test_shipped_configs_hold_the_published_protocol(name, arch):
    from pathlib import Path

    from tscm_ros.training.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "config" / f"{name}.yaml", arch=arch)
    # TSCM_FACTS.md section 3 (options.py / trainer.py defaults of the published code)
    assert (config.lr, config.weight_decay, config.lr_gamma) == (1e-5, 1e-3, 0.99)
    assert (config.batch_size, config.num_negatives, config.negative_pool, config.margin) == (
        8,
        10,
        1000,
        0.1,
    )
    assert (config.epochs, config.patience, config.seed, config.early_stop_metric) == (
        200,
        10,
        1234,
        "10m/R@1",
    )
    assert config.dataset == "pittsburgh" and config.train_data.endswith("pitts30k_train.mat")
    if arch == "student":
        assert config.mining_model == "teacher" and config.cross_metric_form == "published"


def test_evaluation_registry_knows_pittsburgh_and_csv(tmp_path, capsys):
    from tscm_ros.cli.evaluate import main as tscm_evaluate
    from tscm_ros.data.registry import load_dataset

    mat = write_pittsburgh_mat(
        tmp_path / "structure" / "t.mat",
        which_set="test",
        database=["a.jpg"],
        database_utm=[[0, 0]],
        queries=["b.jpg"],
        query_utm=[[3, 0]],
    )
    (tmp_path / "database").mkdir()
    (tmp_path / "query").mkdir()
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        load_dataset(f"pittsburgh:{mat}")  # evaluation checks that the images exist
    for folder, name in (("database", "a.jpg"), ("query", "b.jpg")):
        (tmp_path / folder / name).write_bytes(b"")
    ds = load_dataset(f"pittsburgh:{mat}")
    assert ds.positives["10m"][0].tolist() == [0] and ds.queries == [tmp_path / "query" / "b.jpg"]
    ds = load_dataset(f"pittsburgh:{mat}:{tmp_path}")
    assert ds.database == [tmp_path / "database" / "a.jpg"]
    csv_path = tmp_path / "d.csv"
    csv_path.write_text(
        "image,x,y,split,role\ndatabase/a.jpg,0,0,test,database\nquery/b.jpg,30,0,test,query\n"
    )
    ds = load_dataset(f"csv:{csv_path}:test")
    assert ds.positives["10m"][0].tolist() == [] and ds.name == "d_test"
    assert (
        tscm_evaluate(["--dataset", f"csv:{csv_path}:val", "--untrained", "--out", str(tmp_path / "e")]) == 1
    )
    assert re.match(r"tscm_evaluate: .*no rows with split='val'", capsys.readouterr().err)
