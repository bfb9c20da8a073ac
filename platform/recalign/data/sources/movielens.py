"""Source ``movielens``: the GroupLens MovieLens releases, in the three layouts they ship in.

``data.path`` is the release's folder; its files say which layout it is:

- **latest / 20M / 25M / 32M** (``ratings.csv``, ``movies.csv``, optional ``tags.csv``): CSV
  with a header; pyarrow reads the CRLF line ends as they are.
- **1M / 10M** (``ratings.dat``, ``movies.dat``, optional ``tags.dat`` and ``users.dat``):
  ``::``-separated fields, no header. 1M's ``movies.dat`` is Latin-1, so a text file that is
  not valid UTF-8 is read as Latin-1 and the report says so (``encoding_latin1``).
- **100K** (``u.data`` tab-separated; ``u.item`` ``|``-separated with 19 genre flags, Latin-1;
  optional ``u.genre`` naming the flags, ``u.user``).

Ratings → interactions with explicit ratings and epoch-second timestamps. No rating threshold
here: the ingest applies ``data.min_rating``. Movies → items: ``title``; ``description`` null;
``attributes`` = ``{"genres": [...], "tags": [...]}`` (genres as listed, ``(no genres
listed)`` → ``[]``; tags the distinct free-text tags, most frequent first, ties alphabetical,
at most :data:`MAX_TAGS`; releases without tags give ``[]``). Every listed movie is an item,
rated or not. Where the release has demographics (1M ``users.dat``, 100K ``u.user``), users get
``attributes`` ``{"gender", "age", "occupation"}`` in words (1M's codes decoded as its README
lists them); zip codes are not kept: a quasi-identifier that no model here reads.

Where the release has tags with their user (latest/20M/25M/32M ``tags.csv``, 10M ``tags.dat``),
a rating row's ``review`` is that user's own tags on that movie: the distinct tags joined by
``", "`` in the order of first use (earliest timestamp, then tag text), at most
:data:`REVIEW_MAX_TAGS` tags and :data:`REVIEW_MAX_CHARS` characters (whole tags are left out;
a first tag longer than the bound is cut). Rating rows the user did not tag keep a null
review; tags on a movie the user did not rate are counted (``tags_without_rating``), not added.
Report keys: ``tag_reviews`` (rating rows given a review), ``tags_without_rating`` /
``tag_pairs_without_rating`` (tag rows / (user, movie) pairs without a rating row), and when
not zero ``review_tags_dropped_over_cap`` (distinct tags of rated pairs left out by the
bound), ``review_tags_truncated`` (reviews whose first tag was cut), ``tags_empty`` (blank
tags, skipped), ``tags_without_user`` (a ``tags.csv`` without ``userId``: no reviews).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS, conform
from recalign.data.sources.base import RawData, register
from recalign.data.sources.tabular import csv_convert, key_column, parse_column, require_columns
from recalign.errors import DataError

MAX_TAGS = 20
# bound of a rating's review built from the user's tags: ML-32M has pairs with hundreds of
# tags, and one unbounded review would dominate a prompt or a text batch
REVIEW_MAX_TAGS = 20
REVIEW_MAX_CHARS = 500
REVIEW_SEPARATOR = ", "
NO_GENRES = "(no genres listed)"
RATING_COLUMNS = ("userId", "movieId", "rating", "timestamp")
# ml-1m README: age brackets and occupations are codes in users.dat
ML1M_AGES = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
             "50": "50-55", "56": "56+"}
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
# ml-100k README, the order of u.item's 19 genre flags (u.genre, when present, wins)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western")


@dataclass
class _Release:
    """One layout's tables before assembly into ``RawData``."""

    ratings: pa.Table                 # user_key, item_key, rating, timestamp (conformed)
    movie_keys: list[str]
    titles: list[str | None]
    genres: list[list[str]]
    tags: dict[str, list[str]] = field(default_factory=dict)
    users: pa.Table | None = None     # RAW_USERS
    files: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    user_grouped: bool = True


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------

def _read_csv(path: Path, columns: tuple[str, ...], required: tuple[str, ...]) -> pa.Table:
    """The known columns as strings (parsed by us, for row-precise errors)."""
    try:
        table = pacsv.read_csv(path, convert_options=csv_convert(columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read csv: {exc}", path=str(path)) from None
    require_columns(table.column_names, required, columns, path=str(path))
    return table


def _read_delimited_ratings(path: Path, delimiter: str, layout: str) -> pa.Table:
    """``user item rating timestamp`` rows without a header; ``::`` as ``:`` with empty gaps.

    pyarrow's reader takes one delimiter character, so a ``::`` file is read with ``:`` and
    the empty field between each pair is checked (ratings hold only numbers, never a colon).
    """
    gaps = delimiter == "::"
    names = (["userId", "_gap1", "movieId", "_gap2", "rating", "_gap3", "timestamp"] if gaps
             else list(RATING_COLUMNS))
    bad: list[Any] = []

    def on_bad_row(row: Any) -> str:
        bad.append(row)
        return "error"

    try:
        t = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter[0], quote_char=False,
                                             invalid_row_handler=on_bad_row),
            convert_options=csv_convert(tuple(names)))
    except (pa.ArrowInvalid, OSError) as exc:
        if bad:  # row numbers from pyarrow count from 1 at the first line
            row = bad[0].number - 1 if bad[0].number is not None else None
            raise DataError(f"expected {layout} ({len(names)} fields when split at "
                            f"{delimiter[0]!r}), got {bad[0].actual_columns}: "
                            f"{bad[0].text[:80]!r}", path=str(path), row=row) from None
        raise DataError(f"cannot read ratings: {exc}", path=str(path)) from None
    if gaps:
        for gap in ("_gap1", "_gap2", "_gap3"):
            filled = pc.invert(pc.is_null(t[gap]))
            if pc.any(filled).as_py():
                idx = pc.index(filled, True).as_py()
                raise DataError(f"expected {layout}: a single ':' between fields",
                                path=str(path), row=idx)
    return t


def _decode(path: Path, report: dict[str, Any]) -> str:
    """UTF-8, else Latin-1 (ml-1m and ml-100k text files), noted in the report."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        report.setdefault("encoding_latin1", []).append(path.name)
        return data.decode("latin-1")


def _lines(path: Path, report: dict[str, Any]) -> list[tuple[int, str]]:
    """(row, line) for the non-empty lines; rows count from 0 at the first line."""
    return [(i, line) for i, line in enumerate(_decode(path, report).splitlines())
            if line.strip()]


def _fields(path: Path, row: int, line: str, sep: str, n: int, layout: str) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n:
        raise DataError(f"expected {layout} ({n} fields separated by {sep!r}), got "
                        f"{len(parts)}: {line[:80]!r}", path=str(path), row=row)
    return parts


def _conform_ratings(t: pa.Table, path: Path) -> pa.Table:
    src = str(path)
    return conform(pa.table({
        "user_key": key_column(t["userId"], path=src, column="userId"),
        "item_key": key_column(t["movieId"], path=src, column="movieId"),
        "rating": parse_column(t["rating"], pa.float32(), path=src, column="rating",
                               what="a rating (a finite number)"),
        "timestamp": parse_column(t["timestamp"], pa.int64(), path=src, column="timestamp",
                                  what="a timestamp (an integer)"),
    }), RAW_INTERACTIONS, source=src)


def _genre_list(text: str | None) -> list[str]:
    return [g for g in (text or "").split("|") if g and g != NO_GENRES]


def _top_tags(movie: pa.Array, tag: pa.Array) -> tuple[dict[str, list[str]], dict[str, int]]:
    """movieId → its distinct tags, most frequent first, capped at MAX_TAGS."""
    tag = pc.utf8_trim_whitespace(tag)
    pairs = pa.table({"movie": movie, "tag": tag}).filter(pc.invert(pc.is_null(tag)))
    pairs = pairs.filter(pc.not_equal(pairs["tag"], ""))
    counts = pairs.group_by(["movie", "tag"]).aggregate([([], "count_all")])
    counts = counts.sort_by([("movie", "ascending"), ("count_all", "descending"),
                             ("tag", "ascending")])
    out: dict[str, list[str]] = {}
    dropped = 0
    for mv, tg in zip(counts["movie"].to_pylist(), counts["tag"].to_pylist()):
        lst = out.setdefault(mv, [])
        if len(lst) < MAX_TAGS:
            lst.append(tg)
        else:
            dropped += 1
    report = {"tags_read": len(movie)}
    if dropped:
        report["distinct_tags_dropped_over_cap"] = dropped
    return out, report


def _tag_reviews(ratings: pa.Table, user: pa.Array, movie: pa.Array, tag: pa.Array,
                 timestamp: pa.Array) -> tuple[pa.Table, dict[str, int]]:
    """``ratings`` with ``review`` = the rater's own tags on the movie (see the module doc).

    Vectorised: distinct (user, movie, tag) by ``group_by``, first use by a sort, the bounds
    by per-pair cumulative sums in numpy, the joined strings from list offsets, and the rating
    rows found by a hash join built on the (small) table of tagged pairs.
    """
    tag = pc.utf8_trim_whitespace(tag)
    t = pa.table({"user": user, "movie": movie, "tag": tag, "ts": timestamp})
    t = t.filter(pc.fill_null(pc.not_equal(tag, ""), False))
    report: dict[str, int] = {"tag_reviews": 0, "tags_without_rating": 0,
                              "tag_pairs_without_rating": 0}
    if t.num_rows == 0:
        return ratings, report
    d = t.group_by(["user", "movie", "tag"]).aggregate([("ts", "min"), ([], "count_all")])
    d = d.sort_by([("user", "ascending"), ("movie", "ascending"), ("ts_min", "ascending"),
                   ("tag", "ascending")]).combine_chunks()  # null timestamps sort last
    n = d.num_rows
    users, movies, tags = d["user"].chunk(0), d["movie"].chunk(0), d["tag"].chunk(0)
    new = np.ones(n, dtype=bool)  # first row of each (user, movie) pair
    if n > 1:
        same = pc.and_(pc.equal(users[1:], users[:-1]), pc.equal(movies[1:], movies[:-1]))
        new[1:] = ~same.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new)
    pair = np.cumsum(new) - 1
    rank = np.arange(n) - starts[pair]
    width = pc.utf8_length(tags).to_numpy().astype(np.int64) + len(REVIEW_SEPARATOR)
    before = np.concatenate([[0], np.cumsum(width)])  # joined length of all earlier rows
    end = before[1:] - before[starts][pair] - len(REVIEW_SEPARATOR)  # review length so far
    first = rank == 0
    keep = first | ((rank < REVIEW_MAX_TAGS) & (end <= REVIEW_MAX_CHARS))  # a prefix per pair
    cut = first & (end > REVIEW_MAX_CHARS)
    if cut.any():  # utf8_slice_codeunits counts characters, as utf8_length does
        tags = pc.if_else(pa.array(cut), pc.utf8_slice_codeunits(tags, 0, REVIEW_MAX_CHARS),
                          tags)
    kept = tags.filter(pa.array(keep))
    offsets = np.append(np.flatnonzero(new[keep]), len(kept)).astype(np.int32)
    reviews = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), kept),
                             REVIEW_SEPARATOR)
    pairs = pa.table({"user": users.take(pa.array(starts)),
                      "movie": movies.take(pa.array(starts)),
                      "pair": pa.array(np.arange(len(starts), dtype=np.int32))})
    rows = pa.table({"user": ratings["user_key"], "movie": ratings["item_key"],
                     "row": pa.array(np.arange(ratings.num_rows, dtype=np.int64))})
    hit = rows.join(pairs, keys=["user", "movie"], join_type="inner")
    hit_rows, hit_pairs = hit["row"].to_numpy(), hit["pair"].to_numpy()
    which = np.full(ratings.num_rows, -1, dtype=np.int32)
    which[hit_rows] = hit_pairs
    review = reviews.take(pa.array(which, mask=which < 0))  # masked index → null review
    ratings = ratings.set_column(ratings.schema.get_field_index("review"),
                                 RAW_INTERACTIONS.field("review"), review)
    rated = np.zeros(len(starts), dtype=bool)
    rated[hit_pairs] = True
    rated_row = rated[pair]
    report["tag_reviews"] = len(hit_rows)
    report["tags_without_rating"] = int(d["count_all"].to_numpy()[~rated_row].sum())
    report["tag_pairs_without_rating"] = int((~rated).sum())
    dropped, truncated = int((~keep & rated_row).sum()), int((cut & rated_row).sum())
    if dropped:
        report["review_tags_dropped_over_cap"] = dropped
    if truncated:
        report["review_tags_truncated"] = truncated
    return ratings, report


def _add_tags(rel: _Release, user: pa.Array | None, movie: pa.Array, tag: pa.Array,
              timestamp: pa.Array) -> None:
    """Item top tags and the per-rating tag reviews, with their counts in ``rel.report``."""
    rel.tags, top_report = _top_tags(movie, tag)
    rel.report.update(top_report)
    blank = pc.sum(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(tag), ""), True)).as_py()
    if blank:
        rel.report["tags_empty"] = int(blank)
    if user is None:  # nothing says whose tag it is
        rel.report["tags_without_user"] = len(movie)
        return
    rel.ratings, review_report = _tag_reviews(rel.ratings, user, movie, tag, timestamp)
    rel.report.update(review_report)


def _users_table(rows: list[tuple[str, dict[str, Any]]], path: Path) -> pa.Table:
    return conform(pa.table({
        "user_key": pa.array([k for k, _ in rows], pa.string()),
        "attributes": pa.array([json.dumps(a, ensure_ascii=False) for _, a in rows],
                               pa.string()),
    }), RAW_USERS, source=str(path))


# --------------------------------------------------------------------------------------------
# the three layouts
# --------------------------------------------------------------------------------------------

def _latest(folder: Path) -> _Release:
    ratings_p, movies_p, tags_p = (folder / f for f in ("ratings.csv", "movies.csv", "tags.csv"))
    _require(movies_p, "latest")
    ratings = _conform_ratings(_read_csv(ratings_p, RATING_COLUMNS, RATING_COLUMNS), ratings_p)
    m = _read_csv(movies_p, ("movieId", "title", "genres"), ("movieId",))
    rel = _Release(
        ratings=ratings,
        movie_keys=key_column(m["movieId"], path=str(movies_p), column="movieId").to_pylist(),
        titles=(m["title"].to_pylist() if "title" in m.column_names else [None] * m.num_rows),
        genres=[_genre_list(g) for g in (m["genres"].to_pylist() if "genres" in m.column_names
                                          else [None] * m.num_rows)],
        files=[ratings_p, movies_p])
    if tags_p.is_file():
        t = _read_csv(tags_p, ("userId", "movieId", "tag", "timestamp"), ("movieId", "tag"))
        src = str(tags_p)
        user = (key_column(t["userId"], path=src, column="userId")
                if "userId" in t.column_names else None)
        ts = (parse_column(t["timestamp"], pa.int64(), path=src, column="timestamp",
                           what="a timestamp (an integer)")
              if "timestamp" in t.column_names else pa.nulls(t.num_rows, pa.int64()))
        _add_tags(rel, user, key_column(t["movieId"], path=src, column="movieId"),
                  t["tag"].combine_chunks(), ts)
        rel.files.append(tags_p)
    return rel


def _dat(folder: Path) -> _Release:
    ratings_p, movies_p = folder / "ratings.dat", folder / "movies.dat"
    tags_p, users_p = folder / "tags.dat", folder / "users.dat"
    _require(movies_p, "dat")
    layout = "UserID::MovieID::Rating::Timestamp"
    ratings = _conform_ratings(_read_delimited_ratings(ratings_p, "::", layout), ratings_p)
    report: dict[str, Any] = {}
    keys, titles, genres = [], [], []
    for row, line in _lines(movies_p, report):
        key, sep, rest = line.partition("::")
        title, sep2, g = rest.rpartition("::")  # titles may hold a single ':'
        if not (sep and sep2 and key.strip()):
            raise DataError(f"expected MovieID::Title::Genres, got {line[:80]!r}",
                            path=str(movies_p), row=row)
        keys.append(key.strip())
        titles.append(title.strip() or None)
        genres.append(_genre_list(g.strip()))
    rel = _Release(ratings=ratings, movie_keys=keys, titles=titles, genres=genres,
                   files=[ratings_p, movies_p])
    if tags_p.is_file():  # ml-10m: UserID::MovieID::Tag::Timestamp (a tag may hold ':')
        users, movies, tag_text, stamps = [], [], [], []
        for row, line in _lines(tags_p, report):
            user, s1, rest = line.partition("::")
            movie, s2, rest = rest.partition("::")
            tag, s3, ts = rest.rpartition("::")
            if not (s1 and s2 and s3 and user.strip() and movie.strip()):
                raise DataError(f"expected UserID::MovieID::Tag::Timestamp, got "
                                f"{line[:80]!r}", path=str(tags_p), row=row)
            try:
                stamps.append(int(ts))
            except ValueError:
                raise DataError(f"cannot read {ts!r} as a timestamp (an integer)",
                                path=str(tags_p), row=row, column="Timestamp") from None
            users.append(user.strip())
            movies.append(movie.strip())
            tag_text.append(tag)
        rel.report = report
        _add_tags(rel, pa.array(users, pa.string()), pa.array(movies, pa.string()),
                  pa.array(tag_text, pa.string()), pa.array(stamps, pa.int64()))
        rel.files.append(tags_p)
    if users_p.is_file():  # ml-1m: UserID::Gender::Age::Occupation::Zip-code
        rows = []
        for row, line in _lines(users_p, report):
            user, gender, age, occ, _zip = _fields(
                users_p, row, line, "::", 5, "UserID::Gender::Age::Occupation::Zip-code")
            try:
                occupation = ML1M_OCCUPATIONS[int(occ)]
            except (ValueError, IndexError):
                raise DataError(f"occupation {occ!r} is not one of ml-1m's codes 0-20",
                                path=str(users_p), row=row) from None
            if age not in ML1M_AGES:
                raise DataError(f"age {age!r} is not one of ml-1m's codes "
                                f"{', '.join(ML1M_AGES)}", path=str(users_p), row=row)
            rows.append((user.strip(), {"gender": gender.strip(), "age": ML1M_AGES[age],
                                        "occupation": occupation}))
        rel.users = _users_table(rows, users_p)
        rel.files.append(users_p)
    rel.report = report
    return rel


def _ml100k(folder: Path) -> _Release:
    data_p, item_p = folder / "u.data", folder / "u.item"
    genre_p, user_p = folder / "u.genre", folder / "u.user"
    _require(item_p, "100k")
    ratings = _conform_ratings(
        _read_delimited_ratings(data_p, "\t", "user id, item id, rating, timestamp"), data_p)
    report: dict[str, Any] = {}
    names = list(ML100K_GENRES)
    files = [data_p, item_p]
    if genre_p.is_file():  # "name|index" lines
        files.append(genre_p)
        named = {}
        for row, line in _lines(genre_p, report):
            name, idx = _fields(genre_p, row, line, "|", 2, "genre|index")
            if not idx.strip().isdigit():
                raise DataError(f"genre index {idx!r} is not an integer",
                                path=str(genre_p), row=row)
            named[int(idx)] = name.strip()
        names = [named.get(i, n) for i, n in enumerate(names)]
    keys, titles, genres = [], [], []
    for row, line in _lines(item_p, report):
        f = _fields(item_p, row, line, "|", 5 + len(names),
                    "movie id|title|release date|video release date|IMDb URL|19 genre flags")
        flags = f[5:]
        if not f[0].strip():
            raise DataError("empty movie id", path=str(item_p), row=row)
        if any(x not in ("0", "1") for x in flags):
            raise DataError(f"genre flags must be 0 or 1, got {'|'.join(flags)!r}",
                            path=str(item_p), row=row)
        keys.append(f[0].strip())
        titles.append(f[1].strip() or None)
        genres.append([n for n, x in zip(names, flags) if x == "1" and n != "unknown"])
    rel = _Release(ratings=ratings, movie_keys=keys, titles=titles, genres=genres,
                   files=files, user_grouped=False)  # u.data is not by user
    if user_p.is_file():  # user id|age|gender|occupation|zip code
        rows = []
        for row, line in _lines(user_p, report):
            user, age, gender, occ, _zip = _fields(
                user_p, row, line, "|", 5, "user id|age|gender|occupation|zip code")
            rows.append((user.strip(), {"gender": gender.strip(), "age": age.strip(),
                                        "occupation": occ.strip()}))
        rel.users = _users_table(rows, user_p)
        rel.files.append(user_p)
    rel.report = report
    return rel


# file that tells the layout → reader, and the layout's files for error messages
LAYOUTS: dict[str, tuple[str, Callable[[Path], _Release], str]] = {
    "latest": ("ratings.csv", _latest, "ratings.csv, movies.csv, optional tags.csv"),
    "dat": ("ratings.dat", _dat,
            "ratings.dat, movies.dat, optional tags.dat / users.dat (ml-1m, ml-10m)"),
    "100k": ("u.data", _ml100k, "u.data, u.item, optional u.genre / u.user (ml-100k)"),
}


def _require(path: Path, layout: str) -> None:
    if not path.is_file():
        raise DataError(f"missing {path.name} (the MovieLens {layout} layout has "
                        f"{LAYOUTS[layout][2]})", path=str(path))


@register("movielens")
def load_movielens(cfg: Any) -> RawData:
    """Ratings as interactions; movies (+ genres, top tags) as items; demographics as users."""
    folder = Path(str(cfg.path)).expanduser()
    found = [name for name, (marker, _, _) in LAYOUTS.items() if (folder / marker).is_file()]
    if len(found) != 1:
        what = ("none of" if not found else "more than one of")
        raise DataError(f"{what} the MovieLens layouts' ratings files "
                        f"({'; '.join(f'{k}: {v[2]}' for k, v in LAYOUTS.items())})",
                        path=str(folder))
    rel = LAYOUTS[found[0]][1](folder)
    attributes = [json.dumps({"genres": g, "tags": rel.tags.get(k, [])}, ensure_ascii=False)
                  for k, g in zip(rel.movie_keys, rel.genres)]
    movies_path = str(rel.files[1])
    items = conform(pa.table({
        "item_key": key_column(pa.array(rel.movie_keys, pa.string()), path=movies_path,
                               column="movieId"),
        "title": pa.array(rel.titles, pa.string()),
        "attributes": pa.array(attributes, pa.string()),
    }), RAW_ITEMS, source=movies_path)
    return RawData(interactions=rel.ratings, items=items, users=rel.users,
                   user_grouped=rel.user_grouped,
                   files=[str(p.resolve()) for p in rel.files], report=rel.report)
