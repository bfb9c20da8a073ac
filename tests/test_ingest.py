"""The ingest pipeline and job: repairs are counted, bad input is a precise error, splits are
reproducible, id maps are stable across a grown re-ingest, unchanged input writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recalign.config import DataConfig, load_config
from recalign.data.ingest import load_dataset
from recalign.data.schema import TEST, TRAIN, VALID
from recalign.data.snapshot_io import ingest_to_snapshot, read_dataset
from recalign.errors import ConfigError, DataError
from recalign.storage.snapshot import SnapshotStore

ROOT = Path(__file__).resolve().parents[1]


def write_folder(folder: Path, interactions: dict, items: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(interactions), folder / "interactions.parquet")
    if items is not None:
        pq.write_table(pa.table(items), folder / "items.parquet")
    return folder


def grid(n_users: int, n_items: int, per_user: int, seed: int = 0) -> dict:
    """Every user rates `per_user` distinct items, time increasing."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, per_user, replace=False)
        users += [f"u{u}"] * per_user
        items += [f"i{i}" for i in chosen]
        ts += list(range(1000 * u, 1000 * u + per_user))
    return {"user_id": users, "item_id": items, "rating": [4.0] * len(users), "timestamp": ts}


def cfg_for(path: Path, **kw) -> DataConfig:
    return DataConfig(source="parquet", path=str(path), **kw)


def test_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", {
        "user_id": ["a", "a", "b", "a"], "item_id": ["x", "y", "x", "x"],
        "rating": [1.0, 2.0, 3.0, 5.0], "timestamp": [1, 2, 3, 9]})
    ds = load_dataset(cfg_for(folder, split={"method": "random"}))
    assert ds.report["duplicates_dropped"] == 1
    assert ds.interactions.num_rows == 3
    # the latest duplicate is the one kept
    a, x = ds.user_map.lookup(pa.array(["a"]))[0], ds.item_map.lookup(pa.array(["x"]))[0]
    t = ds.interactions.to_pandas()
    assert t[(t.user == a) & (t.item == x)].rating.tolist() == [5.0]


@pytest.mark.parametrize("bad,match", [(-1.0, "not a valid rating"), (float("nan"), "rating")])
def test_bad_ratings_name_the_row(tmp_path: Path, bad: float, match: str) -> None:
    folder = write_folder(tmp_path / "d", {"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"],
                                           "rating": [1.0, bad, 3.0]})
    with pytest.raises(DataError, match=match) as exc:
        load_dataset(cfg_for(folder))
    assert "row 1" in str(exc.value) and "interactions.parquet" in str(exc.value) or "row 1" in str(exc.value)


def test_unknown_item_is_an_error_or_a_counted_drop(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d",
                          {"user_id": ["a", "a", "b"], "item_id": ["x", "ghost", "x"]},
                          {"item_id": ["x", "y"], "title": ["X", "Y"]})
    with pytest.raises(DataError, match=r"row 1.*'ghost' is not in the items table|'ghost' is not in the items table"):
        load_dataset(cfg_for(folder))
    ds = load_dataset(cfg_for(folder, on_unknown_item="drop"))
    assert ds.report["unknown_items_dropped"] == 1 and ds.interactions.num_rows == 2
    assert ds.report["catalog_items_without_interactions"] == 1  # y: in the catalogue, unused
    assert ds.items.column("title").to_pylist() == ["X"]


def test_empty_after_filtering_is_an_error(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", {"user_id": ["a", "b"], "item_id": ["x", "y"],
                                           "rating": [1.0, 2.0]})
    with pytest.raises(DataError, match="no interactions left after filtering.*min_rating=3.0"):
        load_dataset(cfg_for(folder, min_rating=3.0))


def test_rating_threshold_and_kcore_counts(tmp_path: Path) -> None:
    data = grid(30, 40, 8)
    data["rating"][0] = 1.0  # one below threshold
    data["user_id"] += ["lonely"]
    data["item_id"] += ["i0"]
    data["rating"] += [5.0]
    data["timestamp"] += [5]
    folder = write_folder(tmp_path / "d", data)
    ds = load_dataset(cfg_for(folder, min_rating=3.0, rating_op=">=", kcore=2))
    assert ds.report["below_min_rating"] == 1
    assert ds.report["kcore_removed"] >= 1  # the single-interaction user goes
    assert "lonely" not in ds.user_map.keys.to_pylist()
    counts = np.bincount(ds.interactions["user"].to_numpy())
    assert counts.min() >= 2
    strict = load_dataset(cfg_for(folder, min_rating=4.0, rating_op=">"))
    assert strict.report["below_min_rating"] == len(data["rating"]) - 1  # only the 5.0 stays


def test_random_split_ratios_and_reproducibility(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", grid(200, 300, 25))
    cfg = cfg_for(folder, split={"method": "random", "ratios": [0.6, 0.2, 0.2], "seed": 1})
    a, b = load_dataset(cfg), load_dataset(cfg)
    split = a.interactions["split"].to_numpy()
    assert np.array_equal(split, b.interactions["split"].to_numpy())
    frac = np.bincount(split, minlength=3) / len(split)
    assert np.allclose(frac, [0.6, 0.2, 0.2], atol=0.02), frac
    other = load_dataset(cfg_for(folder, split={"method": "random", "seed": 2}))
    assert not np.array_equal(split, other.interactions["split"].to_numpy())


def test_user_split_keeps_one_valid_and_test_item(tmp_path: Path) -> None:
    data = grid(50, 80, 10)
    data["user_id"] += ["short", "short"]
    data["item_id"] += ["i1", "i2"]
    data["rating"] += [4.0, 4.0]
    data["timestamp"] += [1, 2]
    folder = write_folder(tmp_path / "d", data)
    ds = load_dataset(cfg_for(folder, split={"method": "user", "ratios": [0.8, 0.1, 0.1]}))
    t = ds.interactions.to_pandas()
    per = t.groupby("user").split.value_counts().unstack(fill_value=0)
    short = ds.user_map.lookup(pa.array(["short"]))[0]
    full = per.drop(index=short)
    assert (full[VALID] == 1).all() and (full[TEST] == 1).all() and (full[TRAIN] == 8).all()
    assert per.loc[short].tolist() == [2, 0, 0]
    assert ds.report["users_too_short_for_split"] == 1


def test_leave_one_out_by_time(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", {
        "user_id": ["a"] * 4 + ["b"] * 3, "item_id": ["w", "x", "y", "z", "x", "y", "z"],
        "timestamp": [40, 10, 30, 20, 3, 1, 2]})
    ds = load_dataset(cfg_for(folder, split={"method": "loo"}))
    t = ds.interactions.to_pandas()
    key = {k: i for i, k in enumerate(ds.item_map.keys.to_pylist())}
    a, b = ds.user_map.lookup(pa.array(["a", "b"]))
    ta = t[t.user == a].set_index("item").split
    assert ta[key["w"]] == TEST and ta[key["y"]] == VALID and ta[key["x"]] == TRAIN
    tb = t[t.user == b].set_index("item").split
    assert tb[key["x"]] == TEST and tb[key["z"]] == VALID and tb[key["y"]] == TRAIN


def test_loo_without_timestamps_is_an_error(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", {"user_id": ["a"], "item_id": ["x"]})
    with pytest.raises(DataError, match="needs timestamps"):
        load_dataset(cfg_for(folder, split={"method": "loo"}))


def test_given_split_values_are_checked(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", {"user_id": ["a", "b"], "item_id": ["x", "y"],
                                           "split": ["train", "test"]})
    ds = load_dataset(cfg_for(folder, split={"method": "given"}))
    assert ds.interactions["split"].to_pylist() == [TRAIN, TEST]
    folder2 = write_folder(tmp_path / "e", {"user_id": ["a"], "item_id": ["x"]})
    with pytest.raises(DataError, match="no split column"):
        load_dataset(cfg_for(folder2, split={"method": "given"}))


def test_grown_reingest_keeps_every_old_index(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    store = SnapshotStore(root)
    base = grid(40, 60, 6, seed=1)
    folder = write_folder(tmp_path / "d", base)
    cfg = load_config(None, [f"data.source=parquet", f"data.path={folder}", "data.name=grow",
                             f"output.root={root}"])
    first = ingest_to_snapshot(cfg, store)
    old = read_dataset(store.open("grow", "dataset"))
    # grown data: new users and items arrive, old rows appear in another order
    grown = {k: list(reversed(v)) for k, v in base.items()}
    extra = grid(5, 70, 6, seed=9)
    extra["user_id"] = [f"new{u}" for u in extra["user_id"]]
    for k in grown:
        grown[k] += extra[k]
    write_folder(tmp_path / "d", grown)
    second = ingest_to_snapshot(cfg, store)
    assert not second["skipped"] and second["version"] != first["version"]
    new = read_dataset(store.open("grow", "dataset"))
    n_old_u, n_old_i = old.n_users, old.n_items
    assert new.user_map.keys.slice(0, n_old_u).equals(old.user_map.keys)
    assert new.item_map.keys.slice(0, n_old_i).equals(old.item_map.keys)
    assert new.n_users == n_old_u + 5 and new.n_items >= n_old_i
    assert all(k.startswith("new") for k in new.user_map.keys.slice(n_old_u).to_pylist())
    # an old interaction keeps its split (the split depends on stable ids only)
    def splits(ds):
        t = ds.interactions.to_pandas()
        return {(ds.user_map.keys[u].as_py(), ds.item_map.keys[i].as_py()): s
                for u, i, s in zip(t.user, t.item, t.split)}
    so, sn = splits(old), splits(new)
    assert all(sn[k] == v for k, v in so.items())


def test_unchanged_input_writes_nothing(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    store = SnapshotStore(root)
    folder = write_folder(tmp_path / "d", grid(20, 30, 5))
    cfg = load_config(None, ["data.source=parquet", f"data.path={folder}", f"output.root={root}"])
    first = ingest_to_snapshot(cfg, store)
    again = ingest_to_snapshot(cfg, store)
    assert again["skipped"] and first["version"] in again["reason"]
    assert len(store.list_versions(first["dataset"], "dataset")) == 1
    changed = load_config(None, ["data.source=parquet", f"data.path={folder}",
                                 f"output.root={root}", "data.split.seed=5"])
    assert not ingest_to_snapshot(changed, store)["skipped"]


def test_snapshot_and_in_process_load_are_identical(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    folder = write_folder(tmp_path / "d", grid(30, 50, 7),
                          {"item_id": [f"i{i}" for i in range(50)],
                           "title": [f"T{i}" for i in range(50)]})
    cfg = load_config(None, ["data.source=parquet", f"data.path={folder}", f"output.root={root}"])
    store = SnapshotStore(root)
    s = ingest_to_snapshot(cfg, store)
    from_snap = read_dataset(store.open(s["dataset"], "dataset"))
    direct = load_dataset(cfg.data)
    assert from_snap.interactions.equals(direct.interactions)
    assert from_snap.user_map.keys.equals(direct.user_map.keys)
    assert from_snap.items.equals(direct.items)
    assert from_snap.counts() == direct.counts() == s["counts"]


def test_config_errors_name_key_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("data:\n  source: parquet\n  path: /does/not/exist\n  kcoer: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    msg = str(exc.value)
    assert "data.kcoer: unknown key" in msg and "/does/not/exist" in msg and str(bad) in msg
    with pytest.raises(ConfigError, match="data.kcore: Input should be a valid integer"):
        load_config(None, ["data.kcore=many"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["justakey"])
    with pytest.raises(ConfigError, match=r"data.source: Input should be 'parquet'"):
        load_config(None, ["data.source=excel"])


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)


def test_ingest_job_cli_end_to_end(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", grid(20, 30, 5))
    args = ["-m", "recalign.jobs.ingest", "--set", "data.source=parquet",
            "--set", f"data.path={folder}", "--set", f"output.root={tmp_path / 'root'}"]
    p = _run(args, tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["counts"]["users"] == 20 and summary["counts"]["interactions"] == 100
    assert summary["skipped"] is False and Path(summary["snapshot"]).is_dir()
    p2 = _run(["-m", "recalign.jobs.cli", "ingest", *args[2:]], tmp_path)
    assert p2.returncode == 0 and json.loads(p2.stdout.strip().splitlines()[-1])["skipped"] is True
    assert "nothing to do" in p2.stderr
    p3 = _run(["-m", "recalign.jobs.cli", "ingest", "--set", "data.kcore=x"], tmp_path)
    assert p3.returncode == 2 and "data.kcore" in p3.stderr and p3.stdout == ""
    p4 = _run(["-m", "recalign.jobs.cli", "snapshots", *args[2:]], tmp_path)
    assert p4.returncode == 0 and "LATEST" in p4.stdout


def test_duplicates_error_or_keep(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "d", {"user_id": ["a", "b", "a"], "item_id": ["x", "x", "x"],
                                           "timestamp": [1, 2, 3]})
    with pytest.raises(DataError, match=r"row 0: duplicate interaction \('a', 'x'\)"):
        load_dataset(cfg_for(folder, duplicates="error"))
    kept = load_dataset(cfg_for(folder, duplicates="keep"))
    assert kept.interactions.num_rows == 3 and "duplicates_dropped" not in kept.report


REAL = {
    # source, folder, extra config -> expected (users, items, interactions, train, valid, test)
    "rlmrec": ("rlmrec-amazon-book", {"split": {"method": "given"}},
               (11_000, 9_332, 200_860, 120_464, 40_290, 40_106)),
    "movielens": ("movielens-latest-small", {"min_rating": 3.0}, None),
    "unisrec": ("amazon-scientific", {"split": {"method": "given"}, "duplicates": "keep"},
                (8_442, 4_385, 59_427, 42_543, 8_442, 8_442)),
    "amazon-sequences": ("amazon-beauty-sequences", {"split": {"method": "loo"}},
                         (22_363, 12_101, 198_502, 198_502 - 2 * 22_363, 22_363, 22_363)),
}


@pytest.mark.parametrize("source", sorted(REAL))
def test_real_sources_through_the_pipeline(shared_data: Path, source: str) -> None:
    folder, extra, expected = REAL[source]
    ds = load_dataset(DataConfig(source=source, path=str(shared_data / folder), **extra))
    c = ds.counts()
    if source == "movielens":
        # ratings >= 3 kept; every drop is counted
        assert c["interactions"] + ds.report["below_min_rating"] == 100_836
        import pandas as pd
        ratings = pd.read_csv(shared_data / folder / "ratings.csv")
        pos = ratings[ratings.rating >= 3.0]
        assert c["users"] == pos.userId.nunique() == 609  # one of the 610 users has no rating >= 3
        assert c["items"] == pos.movieId.nunique()
        assert ds.report["below_min_rating"] == int((ratings.rating < 3.0).sum())
        frac = np.array([c["train"], c["valid"], c["test"]]) / c["interactions"]
        assert np.allclose(frac, [0.6, 0.2, 0.2], atol=0.01)
        assert ds.items.num_rows == c["items"]
        toy = ds.items.filter(pa.compute.equal(ds.items["title"], "Toy Story (1995)"))
        assert json.loads(toy["attributes"][0].as_py())["genres"][0] == "Adventure"
        return
    assert (c["users"], c["items"], c["interactions"], c["train"], c["valid"], c["test"]) == expected
    if source == "rlmrec":  # ids equal the matrices' original indices
        assert ds.user_map.keys[:5].to_pylist() == ["0", "1", "2", "3", "4"]
        assert ds.item_map.keys[-1].as_py() == "9331"
        import scipy.sparse as sp
        m = ds.matrix("train")
        assert isinstance(m, sp.csr_matrix) and m.nnz == 120_464


def test_ingest_to_s3_root(tmp_path: Path, s3_bucket: str) -> None:
    """The same job against the loopback S3 server: snapshot, rerun skip, read back."""
    folder = write_folder(tmp_path / "d", grid(25, 40, 6))
    root = f"{s3_bucket}/recalign"
    cfg = load_config(None, ["data.source=parquet", f"data.path={folder}", "data.name=s3ds",
                             f"output.root={root}"])
    store = SnapshotStore(root)
    first = ingest_to_snapshot(cfg, store)
    assert first["snapshot"].startswith(f"{s3_bucket}/recalign/s3ds/dataset/v=")
    assert ingest_to_snapshot(cfg, store)["skipped"]
    ds = read_dataset(store.open("s3ds", "dataset"))
    assert ds.counts() == first["counts"] == load_dataset(cfg.data).counts()


# --------------------------------------------------------------------------------------------
# a source whose files carry a split keeps it unless the config chooses another method
# --------------------------------------------------------------------------------------------

def write_rlmrec(folder: Path, n_users: int = 40, n_items: int = 30) -> dict[str, int]:
    """RLMRec's three pickled matrices with a deliberately uneven split (not 3:1:1)."""
    import pickle

    import scipy.sparse as sp

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pairs = np.array([(u, i) for u in range(n_users)
                      for i in rng.choice(n_items, 8, replace=False)])
    # per user: 5 train, 2 valid, 1 test
    by_pos = np.tile(np.arange(8), n_users)
    parts = {"trn_mat.pkl": pairs[by_pos < 5], "val_mat.pkl": pairs[(by_pos >= 5) & (by_pos < 7)],
             "tst_mat.pkl": pairs[by_pos == 7]}
    for name, p in parts.items():
        m = sp.coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(n_users, n_items))
        (folder / name).write_bytes(pickle.dumps(m))
    return {"train": 5 * n_users, "valid": 2 * n_users, "test": n_users}


def test_rlmrec_keeps_the_files_split_unless_chosen(tmp_path: Path) -> None:
    import argparse

    from recalign.jobs import ingest as ingest_job

    folder = tmp_path / "rlmrec-yelp"
    files = write_rlmrec(folder)
    base = ["data.source=rlmrec", f"data.path={folder}", f"output.root={tmp_path / 'root'}"]
    summary = ingest_job.run(load_config(None, base), argparse.Namespace(force=False))
    assert {k: summary["counts"][k] for k in files} == files
    assert summary["split"] == {"method": "given", "origin": "files"}
    assert summary["dataset"] == "rlmrec-yelp"  # not rlmrec-rlmrec-yelp
    snap = SnapshotStore(str(tmp_path / "root")).open("rlmrec-yelp", "dataset")
    assert snap.manifest["data_config"]["split"]["method"] == "given"
    # an explicit choice wins, and is reported as the config's
    chosen = load_config(None, [*base, "data.split.method=random"])
    summary = ingest_job.run(chosen, argparse.Namespace(force=False))
    assert summary["split"] == {"method": "random", "origin": "config"}
    assert summary["counts"]["train"] != files["train"]
    given = load_config(None, [*base, "data.split.method=given"]).data
    assert given.split_origin() == {"method": "given", "origin": "config"}


def test_split_defaults_per_source(tmp_path: Path) -> None:
    # unisrec's .train/.valid/.test.inter carry a split too; the others do not
    for source, method in (("rlmrec", "given"), ("unisrec", "given"), ("csv", "random"),
                           ("parquet", "random"), ("movielens", "random"),
                           ("amazon-sequences", "random"), ("synthetic", "random")):
        cfg = DataConfig(source=source, path=str(tmp_path))
        assert cfg.split.method == method, source
        assert cfg.split_origin()["origin"] == ("files" if method == "given" else "default")
    # another split setting alone does not count as choosing the method
    seeded = DataConfig(source="rlmrec", path=str(tmp_path), split={"seed": 3})
    assert seeded.split.method == "given"
    # a source changed after validation takes its own default back
    cfg = DataConfig(source="rlmrec", path=str(tmp_path))
    cfg.source = "csv"
    assert cfg.split.method == "random" and cfg.split_origin()["origin"] == "default"


def test_unaffected_fingerprints_and_names_are_unchanged(tmp_path: Path) -> None:
    """Adding per-source split defaults must not re-ingest any existing snapshot whose source
    keeps the random default (values computed before the change)."""
    from recalign.data.ingest import input_fingerprint

    assert input_fingerprint(DataConfig()) == "1f1ed47238cd5e6d"
    assert input_fingerprint(DataConfig(split={"method": "user"}, synthetic={
        "users": 100, "items": 50, "interactions": 1000})) == "209bf8449412e65e"
    assert DataConfig(source="csv", path=str(tmp_path)).model_dump()["split"] == {
        "method": "random", "ratios": (0.6, 0.2, 0.2), "seed": 2023}
    # a source whose output changed re-ingests (its version joins the hash); others do not
    from recalign.data import ingest

    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,5\n")
    ml = DataConfig(source="movielens", path=str(tmp_path / "ml"))
    csv = DataConfig(source="csv", path=str(tmp_path / "ml"))
    before = input_fingerprint(ml), input_fingerprint(csv)
    saved = dict(ingest.SOURCE_VERSIONS)
    try:
        ingest.SOURCE_VERSIONS["movielens"] += 1
        assert input_fingerprint(ml) != before[0] and input_fingerprint(csv) == before[1]
    finally:
        ingest.SOURCE_VERSIONS.clear()
        ingest.SOURCE_VERSIONS.update(saved)
    # names: the source prefixes a folder name unless the name already starts with it
    named = {("csv", "d"): "csv-d", ("rlmrec", "rlmrec-yelp"): "rlmrec-yelp",
             ("rlmrec", "Yelp"): "rlmrec-yelp", ("movielens", "ml-1m"): "movielens-ml-1m",
             ("unisrec", "unisrecord"): "unisrec-unisrecord", ("rlmrec", "RLMRec"): "rlmrec"}
    for (source, folder), want in named.items():
        (tmp_path / folder).mkdir(exist_ok=True)
        assert DataConfig(source=source, path=str(tmp_path / folder)).dataset_name() == want


def test_empty_csv_rating_fails_the_ingest(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user_id,item_id,rating\na,x,4\nb,y,\n")
    with pytest.raises(DataError, match=r"interactions\.csv, row 1, column 'rating': empty "
                                        r"rating field"):
        load_dataset(DataConfig(source="csv", path=str(tmp_path)))
