"""The ``movielens`` source on the three layouts GroupLens ships (latest CSV, 1M/10M ``::``,
100K ``u.*``): the same small release written in each reads back as the same data, a rating's
review is the rater's own tags on the movie, and bad files fail with the file, the row and
what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recalign.config import DataConfig
from recalign.data.ingest import load_dataset
from recalign.data.schema import RAW_INTERACTIONS, RAW_USERS
from recalign.data.sources import RawData, get_source
from recalign.errors import DataError

RATINGS = [(1, 10, 4, 100), (1, 20, 2, 101), (2, 10, 5, 102), (2, 30, 3, 103), (3, 20, 1, 104)]
# key, title, genres (the 100K flags name the same genres; 30 has none, 40 is never rated)
MOVIES = [(10, "Amélie (2001)", ["Comedy", "Romance"]),
          (20, "Star Wars: Episode IV - A New Hope (1977)", ["Action", "Adventure", "Sci-Fi"]),
          (30, "Unrated Movie (1999)", []),
          (40, "Never Rated (2000)", ["Drama"])]
TAGS = [(1, 20, "space: the final frontier", 5), (2, 20, "classic", 6), (3, 20, "classic", 7),
        (1, 10, "paris", 8)]
EXPECTED_TAGS = {"10": ["paris"], "20": ["classic", "space: the final frontier"], "30": [],
                 "40": []}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def write_latest(folder: Path, tags: list[tuple[int, int, str, int]] = TAGS) -> Path:
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\r\n"
        + "".join(f"{u},{i},{r}.0,{t}\r\n" for u, i, r, t in RATINGS))
    (folder / "movies.csv").write_text(
        "movieId,title,genres\r\n" + "".join(
            f'{k},"{title}",{"|".join(g) or "(no genres listed)"}\r\n' for k, title, g in MOVIES),
        encoding="utf-8")
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\r\n"
        + "".join(f'{u},{i},"{tag}",{t}\r\n' for u, i, tag, t in tags))
    return folder


def write_dat(folder: Path, *, tags: bool = True, users: bool = True,
              tag_rows: list[tuple[int, int, str, int]] = TAGS) -> Path:
    """ml-1m style (Latin-1 movies.dat, users.dat) with ml-10m's tags.dat."""
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    (folder / "movies.dat").write_bytes("".join(
        f"{k}::{title}::{'|'.join(g) or '(no genres listed)'}\n" for k, title, g in MOVIES
    ).encode("latin-1"))
    if tags:
        (folder / "tags.dat").write_text(
            "".join(f"{u}::{i}::{tag}::{t}\n" for u, i, tag, t in tag_rows))
    if users:
        (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n"
                                          "3::M::25::15::55117\n")
    return folder


def write_100k(folder: Path) -> Path:
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    lines = []
    for k, title, g in MOVIES:
        flags = ["1" if name in g or (name == "unknown" and not g) else "0"
                 for name in ML100K_GENRES]
        lines.append("|".join([str(k), title, "01-Jan-1995", "", "http://x"] + flags) + "\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{n}|{i}\n" for i, n in enumerate(ML100K_GENRES))
                                    + "\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n"
                                   "3|23|M|writer|32067\n")
    return folder


def load(folder: Path) -> RawData:
    return get_source("movielens")(DataConfig(source="movielens", path=str(folder)))


def interactions(raw: RawData) -> pa.Table:
    t = pa.concat_tables(list(raw.chunks()))
    assert t.schema.equals(RAW_INTERACTIONS)
    return t


def items_by_key(raw: RawData) -> dict[str, tuple[str, list[str], list[str]]]:
    return {r["item_key"]: (r["title"], json.loads(r["attributes"])["genres"],
                            json.loads(r["attributes"])["tags"])
            for r in raw.items.to_pylist()}


WRITERS = {"latest": write_latest, "dat": write_dat, "100k": write_100k}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_every_layout_reads_the_same_release(tmp_path: Path, layout: str) -> None:
    raw = load(WRITERS[layout](tmp_path / layout))
    t = interactions(raw)
    rows = sorted(zip(t["user_key"].to_pylist(), t["item_key"].to_pylist(),
                      t["rating"].to_pylist(), t["timestamp"].to_pylist()))
    assert rows == sorted((str(u), str(i), float(r), ts) for u, i, r, ts in RATINGS)
    got = items_by_key(raw)
    assert sorted(got) == ["10", "20", "30", "40"]  # every listed movie, rated or not
    for k, title, genres in MOVIES:
        assert got[str(k)][:2] == (title, genres)
    if layout == "100k":  # this release has no free-text tags
        assert all(v[2] == [] for v in got.values())
    else:
        assert {k: v[2] for k, v in got.items()} == EXPECTED_TAGS
        assert raw.report["tags_read"] == len(TAGS)
    assert len(raw.files) == {"latest": 3, "dat": 4, "100k": 4}[layout]
    # the rater's own tags; user 2 tagged 20 without rating it (counted, not added)
    reviews = {(u, i): r for u, i, r in zip(t["user_key"].to_pylist(),
                                            t["item_key"].to_pylist(), t["review"].to_pylist())}
    if layout == "100k":
        assert set(reviews.values()) == {None}
    else:
        assert reviews == {("1", "10"): "paris", ("1", "20"): "space: the final frontier",
                           ("2", "10"): None, ("2", "30"): None, ("3", "20"): "classic"}
        assert (raw.report["tag_reviews"], raw.report["tags_without_rating"],
                raw.report["tag_pairs_without_rating"]) == (3, 1, 1)


# Tags of each rated pair of RATINGS, in a file order that is not the order of first use.
LONG = [chr(ord("a") + k) * 99 for k in range(6)]  # 4 join to 402 characters, 5 to 503
REVIEW_TAGS = (
    # (1, 10): repeats count once at their first use; ties by text; blanks and spaces skipped
    [(1, 10, "Paris", 40), (1, 10, "funny", 50), (1, 10, "funny", 30), (1, 10, "b: tie", 60),
     (1, 10, "a-tie", 60), (1, 10, "  Paris ", 45), (1, 10, "  ", 70)]
    # (1, 20): 22 distinct tags, the last two over the 20-tag bound
    + [(1, 20, f"t{k:02d}", 200 + k) for k in reversed(range(22))]
    # (2, 10): six 99-character tags, the last two over the 500-character bound
    + [(2, 10, tag, 300 + k) for k, tag in enumerate(LONG)]
    # (2, 30): a first tag longer than the bound is cut; the next one is left out
    + [(2, 30, "y", 401), (2, 30, "x" * 600, 400)]
    # not rated by the user who tagged: (3, 10) rated by others, user 4 never rates
    + [(3, 10, "unrated", 500), (3, 10, "unrated", 501), (3, 10, "other", 502),
       (4, 40, "no ratings at all", 503)])
EXPECTED_REVIEWS = {
    ("1", "10"): "funny, Paris, a-tie, b: tie",
    ("1", "20"): ", ".join(f"t{k:02d}" for k in range(20)),
    ("2", "10"): ", ".join(LONG[:4]),
    ("2", "30"): "x" * 500,
    ("3", "20"): None,  # user 3 did not tag the movie
}


@pytest.mark.parametrize("layout", ["latest", "dat"])
def test_reviews_are_the_raters_own_tags(tmp_path: Path, layout: str) -> None:
    folder = (write_latest(tmp_path / layout, tags=REVIEW_TAGS) if layout == "latest"
              else write_dat(tmp_path / layout, tag_rows=REVIEW_TAGS))
    raw = load(folder)
    t = interactions(raw)
    got = {(u, i): r for u, i, r in zip(t["user_key"].to_pylist(), t["item_key"].to_pylist(),
                                        t["review"].to_pylist())}
    assert got == EXPECTED_REVIEWS
    assert len(got[("2", "10")]) == 4 * 99 + 3 * 2  # a fifth tag would pass 500
    report = {k: v for k, v in raw.report.items() if k != "encoding_latin1"}
    assert report == {
        "tags_read": len(REVIEW_TAGS),
        "distinct_tags_dropped_over_cap": 2,  # movie 20's top tags, as before
        "tags_empty": 1,
        "tag_reviews": 4,
        "tags_without_rating": 4, "tag_pairs_without_rating": 2,
        "review_tags_dropped_over_cap": 2 + 2 + 1,
        "review_tags_truncated": 1,
    }
    # the items keep their top tags
    assert items_by_key(raw)["10"][2][:3] == ["Paris", "funny", "unrated"]  # tagged twice
    # the review reaches the canonical interactions
    ds = load_dataset(DataConfig(source="movielens", path=str(folder)))
    have = ds.interactions.filter(pc.is_valid(ds.interactions["review"]))
    assert sorted(have["review"].to_pylist()) == sorted(
        r for r in EXPECTED_REVIEWS.values() if r is not None)


def test_tags_without_user_or_with_a_bad_timestamp(tmp_path: Path) -> None:
    folder = write_latest(tmp_path / "nouser")
    (folder / "tags.csv").write_text("movieId,tag\r\n20,classic\r\n10,paris\r\n")
    raw = load(folder)
    assert raw.report == {"tags_read": 2, "tags_without_user": 2}
    assert interactions(raw)["review"].null_count == len(RATINGS)
    assert items_by_key(raw)["20"][2] == ["classic"]
    folder = write_dat(tmp_path / "badts")
    (folder / "tags.dat").write_text("1::20::classic::5\n1::10::paris::soon\n")
    with pytest.raises(DataError, match=r"tags\.dat, row 1, column 'Timestamp': cannot read "
                                        r"'soon' as a timestamp"):
        load(folder)


def test_dat_layout_decodes_latin1_and_users(tmp_path: Path) -> None:
    raw = load(write_dat(tmp_path / "ml-1m"))
    assert raw.report["encoding_latin1"] == ["movies.dat"]  # the file is not valid UTF-8
    assert raw.users.schema.equals(RAW_USERS)
    users = {r["user_key"]: json.loads(r["attributes"]) for r in raw.users.to_pylist()}
    assert users == {
        "1": {"gender": "F", "age": "under 18", "occupation": "K-12 student"},
        "2": {"gender": "M", "age": "56+", "occupation": "self-employed"},
        "3": {"gender": "M", "age": "25-34", "occupation": "scientist"}}
    assert all("48067" not in a for a in raw.users["attributes"].to_pylist())  # no zip codes


def test_100k_users_and_the_unknown_genre(tmp_path: Path) -> None:
    raw = load(write_100k(tmp_path / "ml-100k"))
    users = {r["user_key"]: json.loads(r["attributes"]) for r in raw.users.to_pylist()}
    assert users["2"] == {"gender": "F", "age": "53", "occupation": "other"}
    assert items_by_key(raw)["30"][1] == []  # flag "unknown" is no genre
    assert raw.report["encoding_latin1"] == ["u.item"]


def test_dat_release_through_the_ingest(tmp_path: Path) -> None:
    """Positives rating >= 3 as in the alignment benchmark; drops counted; users kept."""
    ds = load_dataset(DataConfig(source="movielens", path=str(write_dat(tmp_path / "m")),
                                 min_rating=3.0, split={"method": "random",
                                                        "ratios": [0.6, 0.2, 0.2]}))
    assert ds.counts()["interactions"] == 3 and ds.report["below_min_rating"] == 2
    kept = sorted(zip(ds.user_map.lookup(pa.array(["1", "2", "2"])).tolist(),
                      ds.item_map.lookup(pa.array(["10", "10", "30"])).tolist()))
    got = sorted(zip(ds.interactions["user"].to_pylist(), ds.interactions["item"].to_pylist()))
    assert got == kept
    titles = dict(zip(ds.items["item"].to_pylist(), ds.items["title"].to_pylist()))
    assert titles[int(ds.item_map.lookup(pa.array(["10"]))[0])] == "Amélie (2001)"
    assert ds.users is not None and ds.users.num_rows == 2  # user 3 has no rating >= 3


@pytest.mark.parametrize("line, match", [
    ("3::20::1", r"ratings\.dat, row 2: expected UserID::MovieID::Rating::Timestamp .*got 5"),
    ("3::20::1:x:104", r"ratings\.dat, row 2: expected UserID::MovieID::Rating::Timestamp: "
                       r"a single ':'"),
    ("3::20::good::104", r"ratings\.dat, row 2, column 'rating': cannot read 'good'"),
])
def test_bad_ratings_dat_names_the_row(tmp_path: Path, line: str, match: str) -> None:
    folder = write_dat(tmp_path / "m")
    (folder / "ratings.dat").write_text("1::10::4::100\n2::10::5::102\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        load(folder)


def test_bad_side_files_name_the_row(tmp_path: Path) -> None:
    folder = write_dat(tmp_path / "m")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::25::99::55117\n")
    with pytest.raises(DataError, match=r"users\.dat, row 1: occupation '99' is not one of"):
        load(folder)
    (folder / "users.dat").write_text("1::F::1::10\n")
    with pytest.raises(DataError, match=r"users\.dat, row 0: expected UserID::Gender.*got 4"):
        load(folder)
    (folder / "movies.dat").write_text("10::A title without genres\n")
    with pytest.raises(DataError, match=r"movies\.dat, row 0: expected MovieID::Title::Genres"):
        load(folder)
    other = write_100k(tmp_path / "k")
    (other / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n")
    with pytest.raises(DataError, match=r"u\.item, row 0: expected movie id\|title.*got 7"):
        load(other)


def test_layout_detection_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"none of the MovieLens layouts.*ratings\.csv.*"
                                         r"ratings\.dat.*u\.data"):
        load(empty)
    both = write_dat(tmp_path / "both")
    (both / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,1\n")
    with pytest.raises(DataError, match="more than one of the MovieLens layouts"):
        load(both)
    no_movies = write_dat(tmp_path / "nm", tags=False, users=False)
    (no_movies / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"missing movies\.dat \(the MovieLens dat layout"):
        load(no_movies)
    # nothing but the ratings file is needed besides movies: no tags, no users is fine
    raw = load(write_dat(tmp_path / "bare", tags=False, users=False))
    assert raw.users is None and interactions(raw).num_rows == len(RATINGS)
    assert interactions(raw)["review"].null_count == len(RATINGS)  # ml-1m: no tags, no review
    assert "tag_reviews" not in raw.report
    assert pc.all(pc.is_valid(raw.items["title"])).as_py()
