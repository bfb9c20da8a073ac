"""Data-source loaders on the real data sets (../shared/data) and on small bad-input files."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from recalign.config import DataConfig
from recalign.data.safe_pickle import load_sparse_matrix
from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS
from recalign.data.sources import RawData, get_source
from recalign.data.sources import tabular
from recalign.errors import DataError, UnsafePickleError


def load(source: str, path) -> RawData:
    return get_source(source)(DataConfig(source=source, path=str(path)))


def interactions(raw: RawData) -> pa.Table:
    table = pa.concat_tables(list(raw.chunks()))
    assert table.schema.equals(RAW_INTERACTIONS)
    return table


def n_unique(col) -> int:
    return len(pc.unique(col))


def split_counts(table: pa.Table) -> dict[str, int]:
    return {d["values"]: d["counts"] for d in pc.value_counts(table["split"]).to_pylist()}


def rows_of(table: pa.Table, column: str, value: str) -> pa.Table:
    return table.filter(pc.equal(table[column], value))


# --------------------------------------------------------------------------------------------
# real data sets: exact counts from ../shared/data/README.md, and some values
# --------------------------------------------------------------------------------------------

def test_rlmrec_real(shared_data):
    raw = load("rlmrec", shared_data / "rlmrec-amazon-book")
    t = interactions(raw)
    assert split_counts(t) == {"train": 120464, "valid": 40290, "test": 40106}
    assert t.num_rows == 120464 + 40290 + 40106
    assert raw.report == {}  # splits are disjoint
    # full key space from the matrix shape, in index order
    assert raw.items.schema.equals(RAW_ITEMS) and raw.users.schema.equals(RAW_USERS)
    assert raw.items["item_key"].to_pylist() == [str(i) for i in range(9332)]
    assert raw.users["user_key"].to_pylist() == [str(i) for i in range(11000)]
    assert n_unique(t["user_key"]) == 11000 and n_unique(t["item_key"]) == 9332
    assert pc.all(pc.equal(t["rating"], 1.0)).as_py()
    assert t["timestamp"].null_count == t.num_rows
    # values agree with the matrices
    trn = load_sparse_matrix(shared_data / "rlmrec-amazon-book" / "trn_mat.pkl")
    u0 = rows_of(rows_of(t, "split", "train"), "user_key", "0")
    assert sorted(int(k) for k in u0["item_key"].to_pylist()) == \
        sorted(trn.col[trn.row == 0].tolist())
    assert len(raw.files) == 3


def test_movielens_real(shared_data):
    raw = load("movielens", shared_data / "movielens-latest-small")
    t = interactions(raw)
    assert t.num_rows == 100836
    assert n_unique(t["user_key"]) == 610
    assert raw.items.num_rows == 9742 and n_unique(raw.items["item_key"]) == 9742
    assert raw.report["tags_read"] == 3683
    assert raw.users is None
    first = raw.items.slice(0, 1).to_pylist()[0]
    assert first["item_key"] == "1" and first["title"] == "Toy Story (1995)"
    assert first["description"] is None
    attrs = json.loads(first["attributes"])
    assert attrs["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert attrs["tags"] == ["pixar", "fun"]  # pixar twice, fun once
    nogenre = rows_of(raw.items, "item_key", "114335").to_pylist()[0]
    assert nogenre["title"] == "La cravate (1957)"
    assert json.loads(nogenre["attributes"])["genres"] == []
    assert max(len(json.loads(a)["tags"]) for a in raw.items["attributes"].to_pylist()) == 20
    u1 = rows_of(t, "user_key", "1")
    assert u1.num_rows == 232 and rows_of(t, "user_key", "414").num_rows == 2698
    assert u1.slice(0, 1).to_pylist()[0] == {
        "user_key": "1", "item_key": "1", "rating": 4.0, "timestamp": 964982703,
        "review": None, "split": None}
    assert pc.min(t["rating"]).as_py() == 0.5  # no threshold in the loader


def test_unisrec_real(shared_data):
    folder = shared_data / "amazon-scientific"
    raw = load("unisrec", folder)
    t = interactions(raw)
    assert n_unique(t["user_key"]) == 8442
    assert n_unique(t["item_key"]) == 4385 and raw.items.num_rows == 4385
    # 34,101 train lines + 8,442 valid + 8,442 test targets + each user's first item
    assert t.num_rows == 59427
    assert split_counts(t) == {"train": 42543, "valid": 8442, "test": 8442}
    assert raw.report["history_cap"] == 50 and raw.report["item_text_unsplit"] == 0

    item_keys = [line.split("\t")[0] for line in
                 (folder / "Scientific.item2index").read_text().splitlines()]
    u0 = rows_of(t, "user_key", "ABW8NXS7SV55K")  # user index 0
    assert u0["item_key"].to_pylist() == item_keys[:14]  # indexes 0..13 in order
    assert u0["timestamp"].to_pylist() == list(range(14))
    assert u0["split"].to_pylist() == ["train"] * 12 + ["valid", "test"]

    # user 247's sequence (80 items) is longer than the 50-item histories: items 0..28 are
    # only in train lines; the test line's history is the 50 items before the target
    user_keys = [line.split("\t")[0] for line in
                 (folder / "Scientific.user2index").read_text().splitlines()]
    u247 = rows_of(t, "user_key", user_keys[247])["item_key"].to_pylist()
    assert len(u247) == 80
    test_line = [line for line in (folder / "Scientific.test.inter").read_text().splitlines()
                 if line.startswith("247\t")][0]
    _, hist, target = test_line.split("\t")
    assert u247[-51:] == [item_keys[int(i)] for i in hist.split()] + [item_keys[int(target)]]

    item = rows_of(raw.items, "item_key", "B00TNNWMXI").to_pylist()[0]
    assert item["title"].startswith("eSUN Bronze filament 1.75mm 0.5kg(1.1lb) Spool")
    assert item["description"].endswith("3D Printing Filament. eSUN.")
    assert json.loads(item["attributes"]) == {
        "categories": "Industrial & Scientific Additive Manufacturing Products 3D Printing "
                      "Supplies 3D Printing Filament", "brand": "eSUN"}
    # a title with ". " inside and no category path
    sorbate = [r for r in raw.items.to_pylist()
               if (r["description"] or "").startswith("1 lb. Potassium Sorbate")][0]
    assert sorbate["title"].startswith("1 lb. Potassium Sorbate")
    assert json.loads(sorbate["attributes"]) == {"categories": "", "brand": "Home Brew Ohio"}


def test_amazon_sequences_real(shared_data):
    raw = load("amazon-sequences", shared_data / "amazon-beauty-sequences")
    t = interactions(raw)
    assert t.num_rows == 198502
    assert n_unique(t["user_key"]) == 22363 and n_unique(t["item_key"]) == 12101
    first = rows_of(t, "user_key", "A1YJEY40YUW4SE")
    assert first["item_key"].to_pylist() == ["B004756YJA", "B004ZT0SSG", "B0020YLEYK",
                                             "7806397051", "B002WLWX82"]
    assert first["timestamp"].to_pylist() == [0, 1, 2, 3, 4]
    assert t["split"].null_count == t.num_rows


# --------------------------------------------------------------------------------------------
# tabular: csv / parquet, happy path and every bad input
# --------------------------------------------------------------------------------------------

def write(path, text: str):
    path.write_text(text)
    return path


def test_csv_happy_path(tmp_path):
    write(tmp_path / "interactions.csv",
          "user_id,item_id,rating,timestamp,review,split,extra\n"
          "007,10,4.5,100,great,train,x\n"
          "007,11,2,101,,valid,x\n"
          "NA,10, 3 ,102,\"a, b\",test,x\n")
    write(tmp_path / "items.csv",
          'item_id,title,description,attributes\n10,Ten,,"{""color"": ""red""}"\n11,Eleven,d,\n')
    write(tmp_path / "users.csv", 'user_id,attributes\n007,"{""age"": 30}"\n')
    raw = load("csv", tmp_path)
    t = interactions(raw)
    assert t.to_pylist() == [
        {"user_key": "007", "item_key": "10", "rating": 4.5, "timestamp": 100,
         "review": "great", "split": "train"},
        {"user_key": "007", "item_key": "11", "rating": 2.0, "timestamp": 101,
         "review": None, "split": "valid"},
        {"user_key": "NA", "item_key": "10", "rating": 3.0, "timestamp": 102,
         "review": "a, b", "split": "test"},
    ]
    assert raw.items.to_pylist() == [
        {"item_key": "10", "title": "Ten", "description": None, "attributes": '{"color": "red"}'},
        {"item_key": "11", "title": "Eleven", "description": "d", "attributes": None},
    ]
    assert raw.users.to_pylist() == [{"user_key": "007", "attributes": '{"age": 30}'}]
    assert raw.report == {"ignored_columns": {"interactions.csv": ["extra"]}}
    assert [p.rsplit("/", 1)[1] for p in raw.files] == ["interactions.csv", "items.csv",
                                                         "users.csv"]


def test_parquet_int_keys_and_timestamp_type(tmp_path):
    pq.write_table(pa.table({
        "user_id": pa.array([1, 2], pa.int64()),
        "item_id": pa.array([30, 40], pa.int32()),
        "timestamp": pa.array([1_000_000_000_000, 2_000_000_000_000], pa.timestamp("ms")),
    }), tmp_path / "interactions.parquet")
    pq.write_table(pa.table({"item_id": pa.array([30, 40])}), tmp_path / "items.parquet")
    raw = load("parquet", tmp_path)
    t = interactions(raw)
    assert t["user_key"].to_pylist() == ["1", "2"] and t["item_key"].to_pylist() == ["30", "40"]
    assert t["timestamp"].to_pylist() == [1_000_000_000, 2_000_000_000]
    assert raw.items["item_key"].to_pylist() == ["30", "40"]
    # data.path may also name the interactions file itself
    assert interactions(load("parquet", tmp_path / "interactions.parquet")).num_rows == 2


def test_parquet_row_numbers_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "BATCH_ROWS", 4)
    ratings = ["1"] * 9 + ["oops"]
    pq.write_table(pa.table({"user_id": [str(i) for i in range(10)],
                             "item_id": ["a"] * 10, "rating": ratings}),
                   tmp_path / "interactions.parquet")
    raw = load("parquet", tmp_path)
    with pytest.raises(DataError) as exc:
        interactions(raw)
    assert "row 9" in str(exc.value) and "'oops'" in str(exc.value)


def test_missing_required_column(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,rating\n1,4\n")
    with pytest.raises(DataError) as exc:
        load("csv", tmp_path)
    msg = str(exc.value)
    assert "interactions.csv" in msg and "missing required column 'item_id'" in msg
    assert "expected columns: user_id, item_id, rating, timestamp, review, split" in msg
    write(tmp_path / "interactions.csv", "user_id,item_id\n1,4\n")
    write(tmp_path / "items.csv", "title\nx\n")
    with pytest.raises(DataError, match=r"items\.csv: missing required column 'item_id' "
                                        r"\(expected columns: item_id, title, description, "
                                        r"attributes"):
        load("csv", tmp_path)


@pytest.mark.parametrize("column, bad, what", [
    ("rating", "abc", "a rating"),
    ("rating", "inf", "a rating"),
    ("timestamp", "2020-01-01", "a timestamp"),
    ("timestamp", "12.5", "a timestamp"),
])
def test_unparsable_values_name_row_and_value(tmp_path, column, bad, what):
    other = "timestamp" if column == "rating" else "rating"
    write(tmp_path / "interactions.csv",
          f"user_id,item_id,{column},{other}\n1,a,1,1\n1,b,2,2\n2,a,{bad},3\n")
    raw = load("csv", tmp_path)  # header checks pass; values are checked as chunks stream
    with pytest.raises(DataError) as exc:
        interactions(raw)
    msg = str(exc.value)
    assert "interactions.csv" in msg and "row 2" in msg and f"column {column!r}" in msg
    assert f"cannot read {bad!r} as {what}" in msg


def test_empty_rating_is_an_error(tmp_path, monkeypatch):
    """An empty rating field is an error naming file, row and column (README: NaN ratings are
    errors), also in a later batch; a file without a rating column needs none."""
    write(tmp_path / "interactions.csv", "user_id,item_id,rating\n1,a,4\n1,b,\n2,a,3\n")
    with pytest.raises(DataError) as exc:
        interactions(load("csv", tmp_path))
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'interactions.csv'}, row 1, column 'rating': empty "
                          f"rating field (expected a finite number >= 0; rows count from 0 at "
                          f"the first data row")
    monkeypatch.setattr(tabular, "BATCH_ROWS", 2)
    pq.write_table(pa.table({"user_id": ["1", "2", "3"], "item_id": ["a", "a", "a"],
                             "rating": pa.array([1.0, 2.0, None], pa.float64())}),
                   tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet, row 2, column 'rating': null "
                                        r"rating"):
        interactions(load("parquet", tmp_path))
    write(tmp_path / "interactions.csv", "user_id,item_id\n1,a\n")
    assert interactions(load("csv", tmp_path))["rating"].null_count == 1


def test_bad_split_value(tmp_path):
    write(tmp_path / "interactions.csv",
          "user_id,item_id,split\n1,a,train\n1,b,validation\n")
    with pytest.raises(DataError) as exc:
        interactions(load("csv", tmp_path))
    msg = str(exc.value)
    assert "row 1" in msg and "column 'split'" in msg
    assert "split value 'validation' is not one of train, valid, test" in msg


@pytest.mark.parametrize("value, expect", [
    ('"{""a"": 1"', "not valid JSON"),
    ('"[1, 2]"', "expected a JSON object, got list"),
])
def test_bad_attributes(tmp_path, value, expect):
    write(tmp_path / "interactions.csv", "user_id,item_id\n1,a\n")
    write(tmp_path / "items.csv", f'item_id,attributes\na,"{{}}"\nb,{value}\n')
    with pytest.raises(DataError) as exc:
        load("csv", tmp_path)
    msg = str(exc.value)
    assert "items.csv" in msg and "row 1" in msg and "column 'attributes'" in msg
    assert expect in msg


def test_missing_interactions_file(tmp_path):
    with pytest.raises(DataError) as exc:
        load("csv", tmp_path)
    assert "missing interactions file interactions.csv" in str(exc.value)
    assert str(tmp_path / "interactions.csv") in str(exc.value)
    write(tmp_path / "interactions.csv", "user_id,item_id\n1,a\n")
    with pytest.raises(DataError, match="found interactions.csv: use source 'csv'"):
        load("parquet", tmp_path)


def test_empty_key_and_duplicate_item(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,item_id\n1,a\n,b\n")
    with pytest.raises(DataError, match=r"row 1, column 'user_id': empty key"):
        interactions(load("csv", tmp_path))
    write(tmp_path / "interactions.csv", "user_id,item_id\n1,a\n")
    write(tmp_path / "items.csv", "item_id,title\na,x\nb,y\na,z\n")
    with pytest.raises(DataError, match=r"items\.csv, row 2, column 'item_id': duplicate key 'a'"):
        load("csv", tmp_path)


# --------------------------------------------------------------------------------------------
# rlmrec / unisrec / amazon: bad inputs on small files
# --------------------------------------------------------------------------------------------

def test_rlmrec_shape_mismatch_and_unsafe(tmp_path):
    def dump(name, shape):
        m = sp.coo_matrix((np.ones(1), ([0], [0])), shape=shape)
        (tmp_path / name).write_bytes(pickle.dumps(m))

    dump("trn_mat.pkl", (3, 4)), dump("val_mat.pkl", (3, 4)), dump("tst_mat.pkl", (3, 5))
    with pytest.raises(DataError, match=r"disagree in shape: trn_mat.pkl 3x4, val_mat.pkl 3x4, "
                                        r"tst_mat.pkl 3x5"):
        load("rlmrec", tmp_path)
    dump("tst_mat.pkl", (3, 4))
    raw = load("rlmrec", tmp_path)
    assert raw.items.num_rows == 4 and raw.users.num_rows == 3  # keys without interactions
    assert raw.report == {"pairs_in_several_splits": 2}

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit",))

    (tmp_path / "val_mat.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafePickleError, match=r"val_mat\.pkl: refused to load global "
                                                r"builtins\.exec"):
        load("rlmrec", tmp_path)


UNISREC_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def _unisrec_folder(tmp_path, train_lines: list[str]):
    """A tiny UniSRec folder with histories cut to 3 items; sequence of user 0: 0 1 2 3 4 5 6."""
    (tmp_path / "T.train.inter").write_text(UNISREC_HEADER + "".join(train_lines))
    (tmp_path / "T.valid.inter").write_text(UNISREC_HEADER + "0\t2 3 4\t5\n1\t1\t0\n")
    (tmp_path / "T.test.inter").write_text(UNISREC_HEADER + "0\t3 4 5\t6\n1\t1 0\t2\n")
    (tmp_path / "T.item2index").write_text("".join(f"I{i}\t{i}\n" for i in range(7)))
    (tmp_path / "T.user2index").write_text("U0\t0\nU1\t1\n")
    (tmp_path / "T.text").write_text("item_id:token\ttext:token_seq\n"
                                     "I0\tA thing. Root Cat Sub. Brand. \n"
                                     "I1\tNo cats. . Acme. \n"
                                     "I2\tOdd text without fields\n"
                                     "I3\tOther. Root Cat Other. Brand. \n"
                                     "I4\tMr. Tool. Root Cat. Mr. Brand Inc. \n")


def test_unisrec_chains_independent_of_line_order(tmp_path):
    # user 0's train lines (targets 1..4, history cap 3) in shuffled order
    _unisrec_folder(tmp_path, ["0\t1 2 3\t4\n", "0\t0\t1\n", "0\t0 1 2\t3\n", "0\t0 1\t2\n"])
    raw = load("unisrec", tmp_path)
    t = interactions(raw)
    u0 = rows_of(t, "user_key", "U0")
    assert u0["item_key"].to_pylist() == [f"I{i}" for i in range(7)]
    assert u0["split"].to_pylist() == ["train"] * 5 + ["valid", "test"]
    u1 = rows_of(t, "user_key", "U1")
    assert u1["item_key"].to_pylist() == ["I1", "I0", "I2"]
    assert raw.report["history_cap"] == 3
    items = {r["item_key"]: r for r in raw.items.to_pylist()}
    assert len(items) == 7
    assert items["I0"]["title"] == "A thing"
    assert json.loads(items["I0"]["attributes"]) == {"categories": "Root Cat Sub",
                                                      "brand": "Brand"}
    assert items["I1"]["title"] == "No cats"
    assert items["I2"]["title"] is None
    assert items["I2"]["description"] == "Odd text without fields"
    assert items["I4"]["title"] == "Mr. Tool"  # root category "Root Cat" found by majority
    assert json.loads(items["I4"]["attributes"]) == {"categories": "Root Cat",
                                                      "brand": "Mr. Brand Inc"}
    assert items["I5"]["description"] is None
    assert raw.report["item_text_unsplit"] == 1 and raw.report["items_without_text"] == 2


def test_unisrec_broken_chain(tmp_path):
    _unisrec_folder(tmp_path, ["0\t0\t1\n", "0\t0 1\t2\n", "0\t0 9 2\t3\n", "0\t1 2 3\t4\n"])
    with pytest.raises(DataError, match=r"user 0: 4 of its 6 lines do not chain"):
        load("unisrec", tmp_path)


def test_amazon_sequences_duplicate_user(tmp_path):
    write(tmp_path / "seq.txt", "u1 a b\nu2 c\nu1 d\n")
    with pytest.raises(DataError, match=r"seq\.txt, row 2: user 'u1' has a second line"):
        load("amazon-sequences", tmp_path)


# amazon-reviews: no real review file is in ../shared/data, so these fixtures are written in
# the real formats: 2014 reviews (helpful, reviewTime), 2018 reviews (vote, style, image,
# verified), 2014 metadata as Python literals and 2018 metadata as JSON.
REVIEWS_2014 = [
    {"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013714", "reviewerName": "J. McDonald",
     "helpful": [2, 3], "reviewText": "I bought this for my husband.", "overall": 5.0,
     "summary": "Heavenly Highway Hymns", "unixReviewTime": 1252800000,
     "reviewTime": "09 13, 2009"},
    {"reviewerID": "A1X", "asin": "0000031852", "reviewerName": "K", "helpful": [0, 0],
     "reviewText": "", "overall": 2.0, "summary": "Too small", "unixReviewTime": 1300000000,
     "reviewTime": "03 13, 2011"},
]
REVIEW_2018 = {"overall": 4.0, "verified": True, "reviewTime": "10 17, 2015",
               "reviewerID": "A2SUAM1J3GNN3B", "asin": "0000031852", "reviewerName": "Ann",
               "reviewText": "Nice tutu", "summary": "Four stars", "unixReviewTime": 1445040000,
               "vote": "2", "style": {"Size:": " Small"}, "image": ["https://x/y.jpg"]}
META_2014 = ("{'asin': '0000031852', 'title': 'Girls Ballet Tutu Zebra Hot Pink', "
             "'price': 3.17, 'related': {'also_bought': ['B00JHONN1S']}, "
             "'salesRank': {'Toys & Games': 211836}, 'brand': 'Coxlist', "
             "'categories': [['Sports & Outdoors', 'Other Sports', 'Dance'], "
             "['Sports & Outdoors', 'Girls']]}")
META_2018 = {"category": ["Books", "Christian Books & Bibles"], "description": ["Hymns.", "Old."],
             "title": "Heavenly Highway Hymns", "brand": "", "asin": "0000013714",
             "also_buy": [], "rank": "1,000 in Books"}
META_UNREVIEWED = {"asin": "B999", "title": "Never reviewed"}


def test_amazon_reviews_fixture(tmp_path):
    lines = [json.dumps(r) for r in REVIEWS_2014 + [REVIEW_2018]]
    (tmp_path / "reviews_Toys_5.json").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta_Toys.json").write_text(
        META_2014 + "\n" + json.dumps(META_2018) + "\n" + json.dumps(META_UNREVIEWED) + "\n")
    raw = load("amazon-reviews", tmp_path)
    t = interactions(raw)
    assert t.to_pylist() == [
        {"user_key": "A2SUAM1J3GNN3B", "item_key": "0000013714", "rating": 5.0,
         "timestamp": 1252800000, "review": "I bought this for my husband.", "split": None},
        {"user_key": "A1X", "item_key": "0000031852", "rating": 2.0, "timestamp": 1300000000,
         "review": "Too small", "split": None},  # empty reviewText: the summary
        {"user_key": "A2SUAM1J3GNN3B", "item_key": "0000031852", "rating": 4.0,
         "timestamp": 1445040000, "review": "Nice tutu", "split": None},
    ]
    items = {r["item_key"]: r for r in raw.items.to_pylist()}
    assert set(items) == {"0000031852", "0000013714"}  # the unreviewed item is not kept
    assert items["0000031852"]["title"] == "Girls Ballet Tutu Zebra Hot Pink"
    assert json.loads(items["0000031852"]["attributes"]) == {
        "categories": ["Sports & Outdoors", "Other Sports", "Dance", "Girls"],
        "brand": "Coxlist"}
    assert items["0000013714"]["description"] == "Hymns. Old."
    assert json.loads(items["0000013714"]["attributes"]) == {
        "categories": ["Books", "Christian Books & Bibles"]}
    assert raw.report == {"items_without_meta": 0}
    assert len(raw.files) == 2


def test_amazon_reviews_gzip(tmp_path):
    with gzip.open(tmp_path / "Toys_5.json.gz", "wt") as fh:
        fh.write(json.dumps(REVIEW_2018) + "\n")
    raw = load("amazon-reviews", tmp_path)
    assert interactions(raw)["item_key"].to_pylist() == ["0000031852"]
    assert raw.items is None  # no metadata file


def test_amazon_reviews_malformed_line(tmp_path):
    p = tmp_path / "reviews.json"
    p.write_text(json.dumps(REVIEWS_2014[0]) + "\n" + json.dumps(REVIEW_2018) + "\n"
                 + '{"reviewerID": "A", "asin": "B", "overall": 5.0\n')
    with pytest.raises(DataError) as exc:
        load("amazon-reviews", p)
    assert str(p) in str(exc.value) and "line 3: not valid JSON" in str(exc.value)


# Amazon Reviews 2023: the same fixture approach (real field names, millisecond timestamps,
# items keyed by parent_asin, metadata with features/store/main_category)
REVIEWS_2023 = [
    {"rating": 5.0, "title": "Such a lovely scent", "text": "This spray is really nice.",
     "images": [], "asin": "B00YQ6X8EO", "parent_asin": "B00YQ6X8EO",
     "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923,
     "helpful_vote": 0, "verified_purchase": True},
    {"rating": 4.0, "title": "Works", "text": "", "images": [], "asin": "B081TJ8YS3",
     "parent_asin": "B08BBQ29N5", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
     "timestamp": 1588615855070, "helpful_vote": 1, "verified_purchase": True},
]
META_2023 = {"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner",
             "average_rating": 4.8, "rating_number": 10, "features": ["Restores leather."],
             "description": [], "price": None, "images": [], "videos": [], "store": "Howard",
             "categories": [], "details": {"Brand": "Howard"}, "parent_asin": "B08BBQ29N5",
             "bought_together": None}


def test_amazon_reviews_2023_format(tmp_path):
    (tmp_path / "All_Beauty.jsonl").write_text(
        "\n".join(json.dumps(r) for r in REVIEWS_2023) + "\n")
    (tmp_path / "meta_All_Beauty.jsonl").write_text(json.dumps(META_2023) + "\n")
    raw = load("amazon-reviews", tmp_path)
    assert interactions(raw).to_pylist() == [
        {"user_key": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "item_key": "B00YQ6X8EO", "rating": 5.0,
         "timestamp": 1588687728, "review": "This spray is really nice.", "split": None},
        {"user_key": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "item_key": "B08BBQ29N5", "rating": 4.0,
         "timestamp": 1588615855, "review": "Works", "split": None},  # parent, not variant
    ]
    (item,) = raw.items.to_pylist()
    assert item["item_key"] == "B08BBQ29N5"
    assert item["title"] == "Howard LC0008 Leather Conditioner"
    assert item["description"] == "Restores leather."  # empty description: the features
    assert json.loads(item["attributes"]) == {"categories": [], "main_category": "All Beauty",
                                              "brand": "Howard"}
    assert raw.report == {"items_without_meta": 1}


def test_amazon_reviews_format_errors(tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(REVIEWS_2023[0]) + "\n" + json.dumps(REVIEW_2018) + "\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl: the lines mix the 2014/2018 format "
                                        r"\(reviewerID\) and the 2023 format \(user_id\)"):
        load("amazon-reviews", mixed)
    neither = tmp_path / "neither.jsonl"
    neither.write_text(json.dumps({"asin": "B1", "rating": 3.0}) + "\n")
    with pytest.raises(DataError, match=r"no review line has a user field .*reviewerID.*"
                                        r"user_id"):
        load("amazon-reviews", neither)
    no_parent = tmp_path / "np.jsonl"
    rec = dict(REVIEWS_2023[1])
    del rec["parent_asin"]
    no_parent.write_text(json.dumps(REVIEWS_2023[0]) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"np\.jsonl, row 1, column 'parent_asin': empty key"):
        load("amazon-reviews", no_parent)
    d = tmp_path / "d"
    d.mkdir()
    (d / "Beauty.jsonl").write_text(json.dumps(REVIEWS_2023[1]) + "\n")
    (d / "meta_Beauty.jsonl").write_text(json.dumps({"asin": "B08BBQ29N5"}) + "\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.jsonl: line 1: missing 'parent_asin'"):
        load("amazon-reviews", d)
