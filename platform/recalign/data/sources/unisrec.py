"""Source ``unisrec``: UniSRec / RecBole atomic files of one Amazon dataset ``<Name>``.

Files (``data.path`` is the folder)::

    <Name>.train.inter / .valid.inter / .test.inter
        user_id:token  item_id_list:token_seq  item_id:token   (indexes; history, target)
    <Name>.item2index / <Name>.user2index    original key <TAB> index (no header)
    <Name>.text                              item_id:token (ASIN)  text:token_seq (optional)

Sequences. Each ``.inter`` line is one prediction (a user's history cut to its last ``L`` items,
``L`` = 50 here, and the next item); a user's sequence ``s0 .. s(n-1)`` gives train lines for
targets ``s1 .. s(n-3)``, then valid ``s(n-2)`` and test ``s(n-1)``. The full sequence is
rebuilt by chaining, independent of line order: start from the shortest history (the full
prefix), then repeatedly look up the line whose history equals the last ``L`` items so far
and append its target. Every line of every file must be used exactly once, else the user is
reported in a DataError. Interactions: one row per sequence position, ``timestamp`` = the
position (0, 1, ...; synthetic, it only gives the order), ``split`` = the split of the line
that targets it (``train`` for the first items, which appear only in histories). Indexes are
mapped back to the original user / ASIN keys through the index files.

Item text. UniSRec writes ``"<title>. <categories>. <brand>. "``, the categories joined by
spaces, so neither field boundaries nor single categories can be recovered exactly. We keep the
whole text (stripped) as ``description`` — the faithful form for embedding / prompts — and
split heuristically for ``title`` and ``attributes`` = ``{"categories": "<the joined category
path>", "brand": "..."}``: the category path is found by its root category, the word prefix
shared by most items (e.g. ``Industrial & Scientific``), or by the empty-category marker
``". . "``. Items where neither is found get only ``description`` (counted in
``report["item_text_unsplit"]``). Every item of ``.item2index`` is an item, text or not.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recalign.data.schema import RAW_INTERACTIONS, RAW_ITEMS, conform
from recalign.data.sources.base import RawData, register
from recalign.errors import DataError

SPLITS = ("train", "valid", "test")
INTER_COLUMNS = ("user_id:token", "item_id_list:token_seq", "item_id:token")


def _read_tsv(path: Path, column_names: list[str] | None = None) -> pa.Table:
    """Tab-separated, no quoting, every column a string (tokens are kept as written)."""
    try:
        if column_names is None:
            with path.open(encoding="utf-8") as fh:
                column_names = fh.readline().rstrip("\r\n").split("\t")
            skip = 1
        else:
            skip = 0
        return pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=column_names, skip_rows=skip),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in column_names}))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read tab-separated file: {exc}", path=str(path)) from None


def _index_keys(path: Path) -> np.ndarray:
    """``key<TAB>index`` lines → object array ``keys[index]``; indexes must be 0..n-1."""
    t = _read_tsv(path, ["key", "index"])
    try:
        idx = t["index"].cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid as exc:
        raise DataError(f"index column is not an integer: {exc}", path=str(path)) from None
    order = np.argsort(idx, kind="stable")
    if not np.array_equal(idx[order], np.arange(len(idx))):
        raise DataError("indexes are not a dense 0..n-1 range", path=str(path))
    keys = np.asarray(t["key"].to_pylist(), dtype=object)[order]
    if len(set(keys)) != len(keys):
        raise DataError("duplicate key", path=str(path))
    return keys


def _find_name(folder: Path) -> str:
    names = sorted(p.name[: -len(".train.inter")] for p in folder.glob("*.train.inter"))
    if len(names) != 1:
        raise DataError(f"expected exactly one <Name>.train.inter in the folder, found "
                        f"{len(names)}{': ' + ', '.join(names) if names else ''}",
                        path=str(folder))
    return names[0]


def _rebuild(lines: dict[str, list[tuple[tuple[str, ...], str, str]]], max_len: int,
             path: str) -> tuple[list[str], list[str], list[str], list[int], int]:
    """Chain each user's lines into its sequence; returns flat (user, item, split, pos)."""
    users: list[str] = []
    items: list[str] = []
    splits: list[str] = []
    pos: list[int] = []
    capped_start = 0
    for user, entries in lines.items():
        by_hist: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
        for hist, target, split in entries:
            by_hist[hist].append((target, split))
        start = min(entries, key=lambda e: len(e[0]))[0]
        if len(start) >= max_len:
            capped_start += 1  # earlier items were cut by the file writer: not recoverable
        seq, seq_split = list(start), ["train"] * len(start)
        used = 0
        while True:
            nxt = by_hist.get(tuple(seq[-max_len:]))
            if not nxt:
                break
            target, split = nxt.pop(0)
            seq.append(target)
            seq_split.append(split)
            used += 1
        if used != len(entries):
            raise DataError(f"user {user}: {len(entries) - used} of its {len(entries)} lines "
                            f"do not chain into one sequence (histories must be the previous "
                            f"items of the sequence)", path=path)
        users.extend([user] * len(seq))
        items.extend(seq)
        splits.extend(seq_split)
        pos.extend(range(len(seq)))
    return users, items, splits, pos, capped_start


@register("unisrec")
def load_unisrec(cfg: Any) -> RawData:
    """Rebuild the full per-user sequences and the given leave-one-out split."""
    folder = Path(str(cfg.path)).expanduser()
    if not folder.is_dir():
        raise DataError("expected a folder of UniSRec atomic files", path=str(folder))
    name = _find_name(folder)
    paths = {s: folder / f"{name}.{s}.inter" for s in SPLITS}
    item_idx_p, user_idx_p = folder / f"{name}.item2index", folder / f"{name}.user2index"
    text_p = folder / f"{name}.text"
    for p in (*paths.values(), item_idx_p, user_idx_p):
        if not p.is_file():
            raise DataError(f"missing {p.name} (expected {name}.train/.valid/.test.inter, "
                            f"{name}.item2index, {name}.user2index, optional {name}.text)",
                            path=str(p))

    lines: dict[str, list[tuple[tuple[str, ...], str, str]]] = defaultdict(list)
    max_len = 0
    for split, p in paths.items():
        t = _read_tsv(p)
        missing = [c for c in INTER_COLUMNS if c not in t.column_names]
        if missing:
            raise DataError(f"missing required column(s) {', '.join(missing)} (expected "
                            f"columns: {', '.join(INTER_COLUMNS)})", path=str(p))
        hists = pc.utf8_split_whitespace(t["item_id_list:token_seq"]).to_pylist()
        for u, h, target in zip(t["user_id:token"].to_pylist(), hists,
                                t["item_id:token"].to_pylist()):
            lines[u].append((tuple(h), target, split))
            max_len = max(max_len, len(h))
    n_split_lines = {s: sum(1 for e in lines.values() for x in e if x[2] == s) for s in SPLITS}
    bad = [u for u, e in lines.items() if sum(x[2] == "test" for x in e) != 1
           or sum(x[2] == "valid" for x in e) != 1]
    if bad:
        raise DataError(f"user {bad[0]} (and {len(bad) - 1} more) has not exactly one valid and "
                        f"one test line (expected a leave-one-out split)", path=str(folder))

    users, items, splits, pos, capped = _rebuild(lines, max_len, str(folder))
    user_keys, item_keys = _index_keys(user_idx_p), _index_keys(item_idx_p)
    u_idx, i_idx = _to_index(users, len(user_keys), user_idx_p), _to_index(
        items, len(item_keys), item_idx_p)
    interactions = conform(pa.table({
        "user_key": pa.array(user_keys[u_idx], pa.string()),
        "item_key": pa.array(item_keys[i_idx], pa.string()),
        "timestamp": pa.array(pos, pa.int64()),
        "split": pa.array(splits, pa.string()),
    }), RAW_INTERACTIONS, source=str(folder))

    report: dict[str, Any] = {"history_cap": max_len, "lines": n_split_lines}
    if capped:
        report["users_with_truncated_start"] = capped
    files = [str(p.resolve()) for p in (*paths.values(), item_idx_p, user_idx_p)]
    texts: dict[str, str] = {}
    if text_p.is_file():
        files.append(str(text_p.resolve()))
        tt = _read_tsv(text_p)
        if tt.num_columns < 2:
            raise DataError("expected columns item_id:token, text:token_seq", path=str(text_p))
        texts = dict(zip(tt.column(0).to_pylist(), tt.column(1).to_pylist()))
    items_table, unsplit = _items(list(item_keys), texts)
    report["item_text_unsplit"] = unsplit
    report["items_without_text"] = int(sum(k not in texts for k in item_keys))
    return RawData(interactions=interactions, items=items_table, users=None, user_grouped=True,
                   files=files, report=report)


def _to_index(tokens: list[str], n: int, index_path: Path) -> np.ndarray:
    try:
        idx = pa.array(tokens, pa.string()).cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid as exc:
        raise DataError(f"an .inter token is not an integer index: {exc}",
                        path=str(index_path.parent)) from None
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"an .inter file uses index {int(idx.max())} but the index file has "
                        f"only {n} keys", path=str(index_path))
    return idx


def _root_category(texts: list[str]) -> str | None:
    """The longest word prefix that most category segments share (e.g. the dataset's root)."""
    best: str | None = None
    for n_words in range(1, 6):
        counts: Counter[str] = Counter()
        for text in texts:
            seen = set()
            for seg in text.split(". ")[1:]:
                words = seg.split()
                if len(words) >= n_words:
                    seen.add(" ".join(words[:n_words]))
            counts.update(seen)
        if not counts:
            break
        prefix, count = counts.most_common(1)[0]
        if count * 2 < len(texts):
            break
        best = prefix
    return best


def _split_text(text: str, root: str | None) -> tuple[str, str, str] | None:
    """``"<title>. <categories>. <brand>. "`` → (title, categories, brand), or None."""
    cut = text.find(". " + root + " ") if root else -1
    if cut < 0 and root:
        cut = text.find(". " + root + ". ")
    if cut >= 0:
        title, rest = text[:cut], text[cut + 2:]
        cats, _, brand = rest.partition(". ")
    else:
        cut = text.find(". . ")
        if cut < 0:
            return None
        title, cats, brand = text[:cut], "", text[cut + 4:]
    brand = brand.strip()
    brand = brand[:-1] if brand.endswith(".") else brand
    return title.strip(), cats.strip(), brand.strip()


def _items(keys: list[str], texts: dict[str, str]) -> tuple[pa.Table, int]:
    root = _root_category(list(texts.values()))
    titles, descs, attrs = [], [], []
    unsplit = 0
    for key in keys:
        text = texts.get(key)
        if text is None:
            titles.append(None), descs.append(None), attrs.append(None)
            continue
        parts = _split_text(text, root)
        descs.append(text.strip() or None)
        if parts is None:
            unsplit += 1
            titles.append(None), attrs.append(None)
            continue
        title, cats, brand = parts
        titles.append(title or None)
        attrs.append(json.dumps({"categories": cats, "brand": brand}, ensure_ascii=False))
    table = conform(pa.table({"item_key": pa.array(keys, pa.string()),
                              "title": pa.array(titles, pa.string()),
                              "description": pa.array(descs, pa.string()),
                              "attributes": pa.array(attrs, pa.string())}),
                    RAW_ITEMS, source="unisrec items")
    return table, unsplit
