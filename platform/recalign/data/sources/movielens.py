"""Source ``movielens``: the GroupLens ``ml-latest(-small)`` layout.

``ratings.csv`` (userId, movieId, rating, timestamp) → interactions with explicit ratings and
epoch-second timestamps. No rating threshold here: the ingest applies ``data.min_rating``.
``movies.csv`` (movieId, title, genres) → items: ``title``; ``description`` null;
``attributes`` = ``{"genres": [...], "tags": [...]}`` where genres are the ``|``-separated list
(``(no genres listed)`` → ``[]``) and tags are the distinct free-text tags of ``tags.csv``
(optional), most frequent first (ties alphabetical), at most :data:`MAX_TAGS`. Every movie in
``movies.csv`` is an item, rated or not. pyarrow reads the CRLF line ends as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, conform
from recalign.data.sources.base import RawData, register
from recalign.data.sources.tabular import csv_convert, key_column, parse_column, require_columns
from recalign.errors import DataError

MAX_TAGS = 20
NO_GENRES = "(no genres listed)"


def _read(path: Path, columns: tuple[str, ...], required: tuple[str, ...]) -> pa.Table:
    """The known columns as strings (parsed by us, for row-precise errors)."""
    try:
        table = pacsv.read_csv(path, convert_options=csv_convert(columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read csv: {exc}", path=str(path)) from None
    require_columns(table.column_names, required, columns, path=str(path))
    return table


@register("movielens")
def load_movielens(cfg: Any) -> RawData:
    """Ratings as interactions; movies (+ genres, top tags) as items."""
    folder = Path(str(cfg.path)).expanduser()
    ratings_p, movies_p, tags_p = (folder / f for f in ("ratings.csv", "movies.csv", "tags.csv"))
    for p in (ratings_p, movies_p):
        if not p.is_file():
            raise DataError(f"missing {p.name} (expected the MovieLens ml-latest layout: "
                            f"ratings.csv, movies.csv, optional tags.csv)", path=str(p))
    files = [str(ratings_p.resolve()), str(movies_p.resolve())]

    cols = ("userId", "movieId", "rating", "timestamp")
    r = _read(ratings_p, cols, cols)
    src = str(ratings_p)
    interactions = conform(pa.table({
        "user_key": key_column(r["userId"], path=src, column="userId"),
        "item_key": key_column(r["movieId"], path=src, column="movieId"),
        "rating": parse_column(r["rating"], pa.float32(), path=src, column="rating",
                               what="a rating (a finite number)"),
        "timestamp": parse_column(r["timestamp"], pa.int64(), path=src, column="timestamp",
                                  what="a timestamp (an integer)"),
    }), RAW_INTERACTIONS, source=src)

    m = _read(movies_p, ("movieId", "title", "genres"), ("movieId",))
    movie_keys = key_column(m["movieId"], path=str(movies_p), column="movieId")
    genres = (m["genres"].to_pylist() if "genres" in m.column_names
              else [None] * m.num_rows)

    report: dict[str, Any] = {}
    tags: dict[str, list[str]] = {}
    if tags_p.is_file():
        files.append(str(tags_p.resolve()))
        tags, report = _top_tags(tags_p)

    attributes = []
    for key, g in zip(movie_keys.to_pylist(), genres):
        glist = [x for x in (g or "").split("|") if x and x != NO_GENRES]
        attributes.append(json.dumps({"genres": glist, "tags": tags.get(key, [])},
                                     ensure_ascii=False))
    items = conform(pa.table({
        "item_key": movie_keys,
        "title": m["title"] if "title" in m.column_names else pa.nulls(m.num_rows, pa.string()),
        "attributes": pa.array(attributes, pa.string()),
    }), RAW_ITEMS, source=str(movies_p))
    return RawData(interactions=interactions, items=items, users=None, user_grouped=True,
                   files=files, report=report)


def _top_tags(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """movieId → its distinct tags, most frequent first, capped at MAX_TAGS."""
    t = _read(path, ("userId", "movieId", "tag", "timestamp"), ("movieId", "tag"))
    movie = key_column(t["movieId"], path=str(path), column="movieId")
    tag = pc.utf8_trim_whitespace(t["tag"])
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
    report = {"tags_read": t.num_rows}
    if dropped:
        report["distinct_tags_dropped_over_cap"] = dropped
    return out, report
