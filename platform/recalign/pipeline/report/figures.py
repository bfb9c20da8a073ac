"""Gathering the report's figures: the stages' markers, example profiles from the profiles
snapshot and example top-k recommendations from each run's embedding snapshot."""

from __future__ import annotations

import json
from typing import Any

from recalign.pipeline.report.common import EXAMPLES, HIT, REC_USERS, TOP_K, VARIANTS, _why
from recalign.pipeline.stages import STAGES, MarkerStore
from recalign.storage.uri import fsspec_filesystem


def gather(root: str, dataset: str, night: dict[str, Any]) -> dict[str, Any]:
    """Figures of the last completed run of every stage (stages that never completed and did
    not run tonight are left out), tonight's actions and times, example profiles and example
    recommendations (each of the last two with its own ``missing`` note when its inputs are
    not there)."""
    store = MarkerStore(root, dataset)
    markers: dict[str, Any] = {}
    missing: list[str] = []
    for s in STAGES:  # each marker read once
        try:
            markers[s] = store.get(s)
        except Exception as exc:  # unreadable storage: report the rest
            markers[s] = None
            missing.append(f"the {s} stage's marker could not be read ({_why(exc)})")
    tonight = {r["stage"]: r for r in night.get("stages", [])}
    stages = []
    for s in STAGES:
        m = markers[s]
        r = tonight.get(s, {})
        if m is None and not r:  # not part of this pipeline (e.g. graphs without llmrg)
            continue
        stages.append({"stage": s, "action": r.get("action", "-"),
                       "seconds_tonight": r.get("seconds", 0.0),
                       "seconds_when_run": m.seconds if m else None})

    def summary(stage: str) -> dict[str, Any]:
        m = markers.get(stage)
        return m.summary if m else {}

    prof, train, export = summary("profiles"), summary("train"), summary("export")
    fig: dict[str, Any] = {"dataset": dataset, "stages": stages, "llm": prof, "train": train,
                           "export": export, "night_seconds": night.get("seconds"),
                           "missing": missing}
    ctx = _Context(root, dataset)
    for key, build in (("profiles", lambda: example_profiles(ctx)),
                       ("recommendations", lambda: example_recommendations(ctx, train))):
        try:
            fig[key] = build()
        except Exception as exc:  # unexpected data: the report says so and goes on
            fig[key] = {"missing": [f"could not be gathered ({_why(exc)})"]}
    return fig


class _Context:
    """The dataset snapshot and the profiles snapshot, each read at most once (lazily)."""

    def __init__(self, root: str, dataset: str) -> None:
        from recalign.storage.snapshot import SnapshotStore

        self.store = SnapshotStore(root)
        self.name = dataset
        self._ds: Any = None
        self._ds_error: str | None = None
        self._profiles: Any = None
        self._profiles_error: str | None = None
        self._ok: dict[str, dict[int, dict[str, Any]]] = {}

    def dataset(self) -> Any:
        """The LATEST dataset snapshot as a Dataset; raises _Missing with the reason."""
        if self._ds is None and self._ds_error is None:
            from recalign.data.dataset_snapshot import ARTIFACT, read_dataset

            try:
                if self.store.latest_version(self.name, ARTIFACT) is None:
                    self._ds_error = "no dataset snapshot"
                else:
                    self._ds = read_dataset(self.store.open(self.name, ARTIFACT))
            except Exception as exc:
                self._ds_error = f"the dataset snapshot could not be read ({_why(exc)})"
        if self._ds is None:
            raise _Missing(self._ds_error or "no dataset snapshot")
        return self._ds

    def profiles(self) -> Any:
        """The LATEST profiles snapshot (a Snapshot); raises _Missing with the reason."""
        if self._profiles is None and self._profiles_error is None:
            from recalign.llm.profiles import ARTIFACT

            try:
                if self.store.latest_version(self.name, ARTIFACT) is None:
                    self._profiles_error = "no profiles snapshot (the profiles stage has not " \
                                           "completed for this dataset)"
                else:
                    self._profiles = self.store.open(self.name, ARTIFACT)
            except Exception as exc:
                self._profiles_error = f"the profiles snapshot could not be read ({_why(exc)})"
        if self._profiles is None:
            raise _Missing(self._profiles_error or "no profiles snapshot")
        return self._profiles

    def ok_profiles(self, side: str) -> dict[int, dict[str, Any]]:
        """id -> row of every ``ok`` profile of ``side`` (items/users), by id."""
        if side not in self._ok:
            snap = self.profiles()
            rows = {}
            if side in snap.tables:
                t = snap.read_table(side, columns=["id", "key", "status", "summarization",
                                                   "reasoning"])
                rows = {int(r["id"]): r for r in t.to_pylist() if r["status"] == "ok"}
            self._ok[side] = dict(sorted(rows.items()))
        return self._ok[side]


class _Missing(Exception):
    """An input of one report section is not there (the message says which)."""


def _titles(ds: Any) -> dict[int, str]:
    """Dense item id -> title (items without a title are left out)."""
    if ds.items is None:
        return {}
    return {int(i): t for i, t in zip(ds.items["item"].to_pylist(),
                                      ds.items["title"].to_pylist()) if t}


def example_profiles(ctx: _Context, n: int = EXAMPLES) -> dict[str, Any]:
    """The first ``n`` ``ok`` item and user profiles by id, as written, with item titles."""
    out: dict[str, Any] = {"items": [], "users": [], "version": None, "missing": []}
    try:
        snap = ctx.profiles()
        out["version"] = snap.version
        items, users = ctx.ok_profiles("items"), ctx.ok_profiles("users")
    except _Missing as exc:
        out["missing"].append(str(exc))
        return out
    except Exception as exc:
        out["missing"].append(f"the profiles snapshot could not be read ({_why(exc)})")
        return out
    titles: dict[int, str] = {}
    keys: dict[str, int] = {}
    try:
        ds = ctx.dataset()
        titles = _titles(ds)
        keys = {k: i for i, k in enumerate(ds.item_map.keys.to_pylist())}
    except _Missing as exc:
        out["missing"].append(f"item titles: {exc}")
    for r in list(items.values())[:n]:
        # the profile's key names the item; its dense id is the dataset's for that key
        iid = keys.get(r["key"], int(r["id"]))
        out["items"].append({"id": int(r["id"]), "key": r["key"], "title": titles.get(iid),
                             "summarization": r["summarization"], "reasoning": r["reasoning"]})
    for r in list(users.values())[:n]:
        out["users"].append({"id": int(r["id"]), "key": r["key"],
                             "summarization": r["summarization"], "reasoning": r["reasoning"]})
    if not items:
        out["missing"].append("no item profile with status ok")
    if not users:
        out["missing"].append("no user profile with status ok")
    return out


def _open_version(uri: str) -> Any:
    """A committed snapshot version by its URI (``.../<artifact>/v=...``)."""
    from recalign.storage.snapshot import MANIFEST, SUCCESS, Snapshot

    fs, base = fsspec_filesystem(uri)
    if not fs.exists(f"{base}/{SUCCESS}"):
        raise _Missing(f"{uri} is not a committed snapshot (no {SUCCESS})")
    with fs.open(f"{base}/{MANIFEST}", "r") as f:
        return Snapshot(uri, json.load(f))


def read_embeddings(uri: str, side: str) -> tuple[list[str], Any]:
    """(keys, float64 matrix [n, d]) of table ``side`` (users/items) of an embedding snapshot."""
    import numpy as np

    t = _open_version(uri).read_table(side, columns=["key", "vector"])
    col = t["vector"].combine_chunks()
    d = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return t["key"].to_pylist(), np.asarray(flat, dtype=np.float64).reshape(len(col), d)


def top_k(user_vec: Any, item_vecs: Any, exclude: Any, k: int = TOP_K) -> list[int]:
    """Row indexes of the ``k`` best items by dot product, ``exclude`` (row indexes) left out;
    ties go to the lower row (deterministic)."""
    import numpy as np

    scores = item_vecs @ user_vec
    scores[np.asarray(list(exclude), dtype=np.int64)] = -np.inf
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:k] if np.isfinite(scores[i])]


def example_recommendations(ctx: _Context, train: dict[str, Any], n_users: int = REC_USERS,
                            k: int = TOP_K) -> dict[str, Any]:
    """Top-``k`` items of ``n_users`` users from each run's embedding snapshot (training items
    excluded), with titles and whether each is in the user's test split."""
    import numpy as np

    out: dict[str, Any] = {"users": [], "variants": [], "how": "", "missing": []}
    runs = {}
    for v in VARIANTS:
        run = train.get(v)
        snap = run.get("snapshot") if isinstance(run, dict) else None
        if not run:
            out["missing"].append(f"no {v} run in the train stage's summary")
        elif not snap:
            out["missing"].append(f"the {v} run exported no embedding snapshot")
        else:
            runs[v] = snap
    if not runs:
        return out
    try:
        ds = ctx.dataset()
    except _Missing as exc:
        out["missing"].append(str(exc))
        return out
    from recalign.data.schema import TEST, TRAIN

    split = ds.interactions["split"].to_numpy()
    users_col, items_col = ds.interactions["user"].to_numpy(), ds.interactions["item"].to_numpy()
    tr, te = split == TRAIN, split == TEST
    item_keys = ds.item_map.keys.to_pylist()
    user_keys = ds.user_map.keys.to_pylist()
    titles = _titles(ds)
    # vectors in dataset-id order (matched by key: a row the snapshot lacks is never shown)
    vecs: dict[str, tuple[Any, Any, Any]] = {}
    for v, uri in runs.items():
        try:
            ukeys, U = read_embeddings(uri, "users")
            ikeys, I = read_embeddings(uri, "items")
        except Exception as exc:
            out["missing"].append(f"the {v} embedding snapshot {uri} could not be read "
                                  f"({_why(exc)})")
            continue
        upos = {key: r for r, key in enumerate(ukeys)}
        ipos = {key: r for r, key in enumerate(ikeys)}
        Ialigned = np.zeros((len(item_keys), I.shape[1]))
        have = np.zeros(len(item_keys), dtype=bool)
        for i, key in enumerate(item_keys):
            r = ipos.get(key)
            if r is not None:
                Ialigned[i], have[i] = I[r], True
        vecs[v] = (U, upos, (Ialigned, have))
    if not vecs:
        return out
    out["variants"] = [v for v in VARIANTS if v in vecs]
    # candidates: users with training items, in every snapshot, preferring profiled users
    n_test = np.bincount(users_col[te], minlength=len(user_keys))
    n_train = np.bincount(users_col[tr], minlength=len(user_keys))
    cands = [u for u in range(len(user_keys)) if n_train[u] > 0
             and all(user_keys[u] in upos for _U, upos, _I in vecs.values())]
    profiled: dict[int, dict[str, Any]] = {}
    try:
        by_id = ctx.ok_profiles("users")
        keyed = {r["key"]: r for r in by_id.values()}
        profiled = {u: keyed[user_keys[u]] for u in cands if user_keys[u] in keyed}
    except _Missing as exc:
        out["missing"].append(f"user profiles: {exc}")
    except Exception as exc:
        out["missing"].append(f"user profiles could not be read ({_why(exc)})")
    pool = [u for u in cands if u in profiled] or cands
    chosen = sorted(pool, key=lambda u: (-int(n_test[u]), u))[:n_users]
    out["how"] = (f"the {len(chosen)} user(s) with the most held-out test items among the "
                  f"{len(pool)} {'users with an ok profile' if profiled else 'users'} that "
                  f"have training items and a vector in every run (ties by user id); each "
                  f"run ranks all items by the dot product of the user's and the item's final "
                  f"vectors, the user's training items left out; {HIT} marks an item in the "
                  f"user's test split")
    for u in chosen:
        train_items = set(items_col[tr & (users_col == u)].tolist())
        test_items = set(items_col[te & (users_col == u)].tolist())
        entry: dict[str, Any] = {"id": int(u), "key": user_keys[u], "n_train": len(train_items),
                                 "n_test": len(test_items),
                                 "profile": (profiled.get(u) or {}).get("summarization"),
                                 # what the user had: a reader judges the lists against it
                                 "train_titles": [titles.get(i) or item_keys[i]
                                                  for i in sorted(train_items)][:10],
                                 "test_titles": [titles.get(i) or item_keys[i]
                                                 for i in sorted(test_items)][:10],
                                 "top": {}, "hits": {}}
        for v in out["variants"]:
            U, upos, (Iv, have) = vecs[v]
            excl = train_items | set(np.flatnonzero(~have).tolist())
            ids = top_k(U[upos[user_keys[u]]], Iv, excl, k)
            entry["top"][v] = [{"id": i, "key": item_keys[i], "title": titles.get(i),
                                "test": i in test_items} for i in ids]
            entry["hits"][v] = sum(i in test_items for i in ids)
        out["users"].append(entry)
    return out
