"""The demo's report: ``report.md`` and a self-contained ``report.html`` in
``<root>/<dataset>/report/``.

What it shows:

* the results table (base vs aligned test metrics, LLM usage, index, stage times) that the
  demo also prints (:func:`table_rows`);
* base vs aligned test metrics, with the spread over seeds when the train stage ran several
  (mean ± sample standard deviation, the relative gain of the means, every seed's value);
* LLM accounting of the last profiles run: requests, tokens and throughput;
* training curves of every run (every seed) and a base-vs-aligned bar chart (PNG files beside
  report.md; inlined as ``data:`` URIs in report.html, so the HTML needs nothing else);
* three item and three user profiles exactly as the LLM wrote them (LATEST profiles snapshot);
* for two users, the top-10 recommendations of the base and of the aligned model side by side,
  held-out test items marked.

Built from the nightly's completion markers and the snapshots they point at, so a second
(skipped) night reports the same figures as the night that computed them. Profiles and titles
are untrusted text: every piece of data is escaped for the format it goes into and bounded in
length. Anything missing or unreadable (no profiles snapshot, no base run, a damaged snapshot)
is said in the report; the rest still renders.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from dataclasses import dataclass
from typing import Any

from recalign.pipeline.stages import STAGES, MarkerStore
from recalign.storage.uri import fsspec_filesystem, join

METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")
VARIANTS = ("base", "aligned")
#: characters of one profile text shown in the report (longer ones are cut and say so)
TEXT_LIMIT = 400
TITLE_LIMIT = 120
EXAMPLES = 3
REC_USERS = 2
TOP_K = 10
HIT = "✓"


def _why(exc: BaseException) -> str:
    """One line naming what went wrong (for the report's 'missing' notes)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# ------------------------------------------------------------------------ gathering

def gather(root: str, dataset: str, night: dict[str, Any]) -> dict[str, Any]:
    """Figures of the last completed run of every stage, tonight's actions and times, example
    profiles and example recommendations (each of the last two with its own ``missing`` note
    when its inputs are not there)."""
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


# ------------------------------------------------------------------------ figures

@dataclass
class Stat:
    """One metric of one variant over its runs."""

    values: list[tuple[Any, float]]  # (seed or None, value)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(v for _, v in self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single run."""
        return statistics.stdev([v for _, v in self.values]) if self.n >= 2 else None


def seed_runs(train: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """Every run of ``variant``: the ``seeds`` list when it has two or more, else the single
    (primary) run."""
    seeds = train.get("seeds")
    seeds = seeds.get(variant) if isinstance(seeds, dict) else None
    seeds = [r for r in seeds if isinstance(r, dict)] if isinstance(seeds, list) else []
    if len(seeds) >= 2:
        return seeds
    run = train.get(variant)
    return [run] if isinstance(run, dict) and run else []


def metric_stats(train: dict[str, Any]) -> dict[str, dict[str, Stat]]:
    """variant -> metric -> Stat over the variant's runs (runs without the metric skipped)."""
    out: dict[str, dict[str, Stat]] = {}
    for v in VARIANTS:
        runs = seed_runs(train, v)
        if not runs:
            continue
        out[v] = {}
        for m in METRICS:
            vals = [(r.get("seed"), float(x)) for r in runs
                    if isinstance(x := (r.get("test") or {}).get(m), (int, float))]
            if vals:
                out[v][m] = Stat(vals)
    return out


def relative_gain(base: float | None, aligned: float | None) -> float | None:
    """aligned / base - 1 (None when either is missing or base is 0)."""
    if base is None or aligned is None or not base:
        return None
    return aligned / base - 1


def _fmt(x: float | None, nd: int = 4) -> str:
    return "None" if x is None else f"{round(x, nd)}"


def _fmt_stat(s: Stat | None) -> str:
    if s is None:
        return "None"
    if s.std is None:
        return _fmt(s.mean)
    return f"{s.mean:.4f} ± {s.std:.4f}"


def table_rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    stats = metric_stats(fig.get("train") or {})
    for m in METRICS:
        b, a = stats.get("base", {}).get(m), stats.get("aligned", {}).get(m)
        g = relative_gain(b.mean if b else None, a.mean if a else None)
        gain = f" ({g * 100:+.1f} %)" if g is not None else ""
        rows.append((f"test {m}: base / aligned", f"{_fmt_stat(b)} / {_fmt_stat(a)}{gain}"))
    ns = [max((s.n for s in stats.get(v, {}).values()), default=0) for v in VARIANTS]
    if max(ns) >= 2:
        rows.append(("seeds per run (base / aligned)",
                     f"{ns[0]} / {ns[1]} (mean ± sample std)"))
    llm = fig.get("llm") or {}
    rows.append(("LLM requests (ok / failed)", f"{llm.get('requests', 0)} "
                 f"({llm.get('ok', 0)} / {llm.get('failed', 0)})"))
    rows.append(("LLM tokens (prompt / completion)",
                 f"{llm.get('prompt_tokens', 0)} / {llm.get('completion_tokens', 0)}"))
    tp = llm_throughput(fig)
    if tp["seconds"]:
        rows.append(("LLM throughput", f"{tp['profiles_per_s']} profiles/s, "
                     f"{tp['completion_tokens_per_s']} completion tokens/s"))
    if fig.get("export"):
        rows.append(("index (kind, recall@100)",
                     f"{fig['export'].get('kind')}, {fig['export'].get('recall')}"))
    for s in fig["stages"]:
        when = s["seconds_when_run"]
        rows.append((f"stage {s['stage']}", f"{s['action']} tonight, {s['seconds_tonight']} s "
                     f"(last run {when} s)" if when is not None else f"{s['action']}"))
    rows.append(("night total", f"{fig.get('night_seconds')} s"))
    return rows


def llm_throughput(fig: dict[str, Any]) -> dict[str, Any]:
    """Profiles and completion tokens per second of the last profiles run.

    Profiles = entities generated (ok + failed, retries not counted twice). Seconds: the
    run's generation time when the summary has it (``generation_s``), else the whole profiles
    stage (engine start-up and snapshot I/O included)."""
    llm = fig.get("llm") or {}
    generated = int(llm.get("ok", 0) or 0) + int(llm.get("failed", 0) or 0)
    seconds, basis = llm.get("generation_s"), "generation time"
    if not seconds:
        stage = next((s for s in fig.get("stages", []) if s["stage"] == "profiles"), {})
        seconds = stage.get("seconds_when_run") or llm.get("seconds")
        basis = "the whole profiles stage, engine start-up included"
    if not seconds or not generated:
        return {"generated": generated, "seconds": None, "basis": basis,
                "profiles_per_s": None, "completion_tokens_per_s": None}
    return {"generated": generated, "seconds": seconds, "basis": basis,
            "profiles_per_s": round(generated / seconds, 3),
            "completion_tokens_per_s": round(int(llm.get("completion_tokens", 0) or 0)
                                             / seconds, 2)}


# ------------------------------------------------------------------------ plots

def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def curves_png(curves: dict[str, dict[str, Any]], metric: str = "recall@20") -> bytes:
    """Validation ``metric`` per evaluated epoch, one line per run (label -> curves.json);
    runs whose label starts with the same variant share a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = {v: f"C{k}" for k, v in enumerate(VARIANTS)}
    seen: dict[str, int] = {}
    for n, (label, c) in enumerate(curves.items()):
        variant = label.split(" ", 1)[0]
        k = seen[variant] = seen.get(variant, -1) + 1  # the k-th run of this variant
        ax.plot(c["valid_epoch"], c["valid"].get(metric, []), marker="o", ms=3, label=label,
                color=colours.get(variant, f"C{n + 2}"), alpha=0.9,
                linestyle=("-", "--", ":", "-.")[k % 4])
    ax.set_xlabel("epoch"), ax.set_ylabel(f"validation {metric}"), ax.legend(fontsize=7)
    ax.set_title("training curves")
    return _png(fig)


def metrics_png(fig_data: dict[str, Any]) -> bytes:
    """Grouped bars: test metrics of base and aligned (the mean over seeds with a ± std error
    bar and each seed as a dot when there are several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stats = metric_stats(fig_data.get("train") or {})
    metrics = [m for m in METRICS if any(m in st for st in stats.values())]
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, v in enumerate(VARIANTS):
        st = stats.get(v, {})
        pos = x + (k - 0.5) * 0.38
        means = [st[m].mean if m in st else 0.0 for m in metrics]
        errs = [(st[m].std or 0.0) if m in st else 0.0 for m in metrics]
        ax.bar(pos, means, 0.38, yerr=errs if any(errs) else None, capsize=3, label=v,
               color=f"C{k}")
        for j, m in enumerate(metrics):  # each seed's value as a dot beside its bar's centre
            if m in st and st[m].n >= 2:
                ax.plot([pos[j] + 0.08] * st[m].n, [val for _, val in st[m].values], "k.",
                        ms=4)
    ax.set_xticks(x, metrics), ax.set_ylabel("test"), ax.legend()
    ax.set_title("base vs aligned" + (" (mean ± std over seeds)" if any(
        s.n >= 2 for st in stats.values() for s in st.values()) else ""))
    return _png(fig)


def run_curves(train: dict[str, Any], missing: list[str] | None = None
               ) -> dict[str, dict[str, Any]]:
    """label -> curves.json of every run (every seed when there are several)."""
    out: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        runs = seed_runs(train, v)
        several = len(runs) >= 2
        for n, run in enumerate(runs):
            run_dir = (run or {}).get("run_dir")
            label = f"{v} seed {run.get('seed', n)}" if several else v
            if not run_dir:
                continue
            try:
                rfs, rbase = fsspec_filesystem(run_dir)
                with rfs.open(f"{rbase}/curves.json", "r") as f:
                    c = json.load(f)
                bad = [m for m, ys in c["valid"].items() if len(ys) != len(c["valid_epoch"])]
                if bad:
                    raise ValueError(f"{', '.join(bad)}: not one value per evaluated epoch")
                out[label] = c
            except Exception as exc:
                if missing is not None:
                    missing.append(f"curves of {label} ({run_dir}/curves.json): {_why(exc)}")
    return out


# ------------------------------------------------------------------------ rendering

def _clean(text: Any) -> str:
    """One line: every non-printable character (newlines, tabs, controls, line separators)
    becomes a space."""
    s = "" if text is None else str(text)
    return "".join(ch if ch.isprintable() else " " for ch in s)


def bounded(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``text`` on one line, cut at ``limit`` characters with a note saying so."""
    s = _clean(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}… [truncated: {len(s)} characters, first {limit} shown]"


# characters that mean something inline in (GitHub-flavoured) Markdown, inside a table cell:
# emphasis, code, links/images, strikethrough, raw HTML/autolinks, entities, the cell border
_MD_SPECIAL = set("\\`*_[]~<>&|!")


def md_escape(text: Any) -> str:
    """Plain text for a Markdown table cell: one line, markup characters backslash-escaped
    (CommonMark escapes any ASCII punctuation; GFM tables take ``\\|``)."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in _clean(text))


def html_escape(text: Any) -> str:
    return html.escape(_clean(text), quote=True)


# a document: a list of blocks rendered to Markdown or HTML; every string in a block is
# plain text (escaped by the renderer)
Block = tuple


def _h(level: int, text: str) -> Block:
    return ("h", level, text)


def _p(text: str) -> Block:
    return ("p", text)


def _table(header: list[str], rows: list[list[str]]) -> Block:
    return ("table", header, rows)


def _img(alt: str, name: str, png: bytes) -> Block:
    return ("img", alt, name, png)


def _ul(items: list[str]) -> Block:
    return ("ul", items)


def _seed_list(s: Stat) -> str:
    return ", ".join(f"{'' if sd is None else f'seed {sd}: '}{val:.4f}" for sd, val in s.values)


def metrics_section(fig: dict[str, Any]) -> list[Block]:
    train = fig.get("train") or {}
    stats = metric_stats(train)
    blocks: list[Block] = [_h(2, "Base vs aligned (test)")]
    if not stats:
        return blocks + [_p("No train results: the train stage has not completed.")]
    several = any(s.n >= 2 for st in stats.values() for s in st.values())
    rows = []
    for m in METRICS:
        b, a = stats.get("base", {}).get(m), stats.get("aligned", {}).get(m)
        g = relative_gain(b.mean if b else None, a.mean if a else None)
        row = [m, _fmt_stat(b), _fmt_stat(a), "-" if g is None else f"{g * 100:+.1f} %"]
        if several:
            row += [_seed_list(b) if b else "-", _seed_list(a) if a else "-"]
        rows.append(row)
    if several:
        n = {v: max((s.n for s in stats.get(v, {}).values()), default=0) for v in VARIANTS}
        blocks.append(_p(f"Mean ± sample standard deviation (n − 1) over {n['base']} base and "
                         f"{n['aligned']} aligned runs with different seeds; gain = relative "
                         f"difference of the means (aligned / base − 1)."))
        header = ["metric", "base", "aligned", "gain", "base per seed", "aligned per seed"]
    else:
        blocks.append(_p("One run per model (no seed spread: the train stage ran one seed); "
                         "gain = aligned / base − 1."))
        header = ["metric", "base", "aligned", "gain"]
    blocks.append(_table(header, rows))
    epochs = [f"{v}: {(train.get(v) or {}).get('epochs')} epochs" for v in VARIANTS
              if train.get(v)]
    if epochs:
        blocks.append(_p("Training length of the primary runs: " + ", ".join(epochs) + "."))
    for v in VARIANTS:
        if v not in stats:
            blocks.append(_p(f"Missing: no {v} run in the train stage's summary."))
    return blocks


def llm_section(fig: dict[str, Any]) -> list[Block]:
    llm = fig.get("llm") or {}
    blocks: list[Block] = [_h(2, "LLM profiles: requests, tokens, throughput")]
    if not llm:
        return blocks + [_p("No profiles run: the profiles stage has not completed.")]
    tp = llm_throughput(fig)
    rows = [["requests (every attempt, retries included)", str(llm.get("requests", 0))],
            ["profiles generated: ok / failed", f"{llm.get('ok', 0)} / {llm.get('failed', 0)}"],
            ["retried", str(llm.get("retried", 0))],
            ["reused from the previous snapshot", str(llm.get("reused", 0))],
            ["prompt tokens", str(llm.get("prompt_tokens", 0))],
            ["completion tokens", str(llm.get("completion_tokens", 0))],
            ["seconds", "-" if tp["seconds"] is None else f"{tp['seconds']} ({tp['basis']})"],
            ["profiles per second", "-" if tp["profiles_per_s"] is None
             else str(tp["profiles_per_s"])],
            ["completion tokens per second", "-" if tp["completion_tokens_per_s"] is None
             else str(tp["completion_tokens_per_s"])]]
    blocks.append(_table(["figure", "value"], rows))
    if tp["seconds"] is None:
        blocks.append(_p("Throughput: nothing was generated in the last profiles run "
                         "(every profile was reused), or its time is unknown."))
    else:
        blocks.append(_p(f"Throughput = profiles generated (ok + failed: {tp['generated']}) and "
                         f"completion tokens, each divided by {tp['seconds']} s ({tp['basis']})."))
    return blocks


def profiles_section(fig: dict[str, Any]) -> list[Block]:
    p = fig.get("profiles") or {}
    blocks: list[Block] = [_h(2, "Example profiles (as the LLM wrote them)")]
    if p.get("version"):
        blocks.append(_p(f"The first {EXAMPLES} item and user profiles with status ok, by id, "
                         f"from the profiles snapshot {p['version']}. Each text is shown up to "
                         f"{TEXT_LIMIT} characters."))
    if p.get("items"):
        blocks.append(_h(3, "Items"))
        blocks.append(_table(["id", "key", "title", "summarization", "reasoning"],
                             [[str(r["id"]), bounded(r["key"], TITLE_LIMIT),
                               "(no title)" if r["title"] is None else bounded(r["title"],
                                                                               TITLE_LIMIT),
                               bounded(r["summarization"]), bounded(r["reasoning"])]
                              for r in p["items"]]))
    if p.get("users"):
        blocks.append(_h(3, "Users"))
        blocks.append(_table(["id", "key", "summarization", "reasoning"],
                             [[str(r["id"]), bounded(r["key"], TITLE_LIMIT),
                               bounded(r["summarization"]), bounded(r["reasoning"])]
                              for r in p["users"]]))
    for m in p.get("missing", []) if p else ["example profiles were not gathered"]:
        blocks.append(_p(f"Missing: {m}."))
    return blocks


def recommendations_section(fig: dict[str, Any]) -> list[Block]:
    r = fig.get("recommendations") or {}
    blocks: list[Block] = [_h(2, f"Top-{TOP_K} recommendations, base vs aligned")]
    if r.get("how"):
        blocks.append(_p(f"Users: {r['how']}."))
    variants = r.get("variants", [])
    for u in r.get("users", []):
        blocks.append(_h(3, f"User {bounded(u['key'], TITLE_LIMIT)} (id {u['id']}): "
                            f"{u['n_train']} training items, {u['n_test']} test items"))
        if u.get("profile"):
            blocks.append(_p(f"Profile: {bounded(u['profile'])}"))
        hits = ", ".join(f"{v} {u['hits'][v]}" for v in variants)
        blocks.append(_p(f"Test items in the top {TOP_K}: {hits}."))
        rows = []
        for k in range(max((len(u["top"][v]) for v in variants), default=0)):
            row = [str(k + 1)]
            for v in variants:
                lst = u["top"][v]
                if k < len(lst):
                    it = lst[k]
                    title = bounded(it["title"] if it["title"] else it["key"], TITLE_LIMIT)
                    row.append(f"{HIT} {title}" if it["test"] else title)
                else:
                    row.append("")
            rows.append(row)
        blocks.append(_table(["rank", *variants], rows))
    for m in r.get("missing", []) if r else ["example recommendations were not gathered"]:
        blocks.append(_p(f"Missing: {m}."))
    return blocks


def document(fig: dict[str, Any], plots: dict[str, bytes], missing: list[str]) -> list[Block]:
    dataset = fig.get("dataset", "?")
    blocks: list[Block] = [_h(1, f"recalign demo: {dataset}"),
                           _p(f"Night total {fig.get('night_seconds')} s. Figures come from "
                              f"the last completed run of each stage.")]
    def results() -> list[Block]:
        return [_h(2, "Results"), _table(["figure", "value"],
                                         [[k, v] for k, v in table_rows(fig)])]

    def metrics() -> list[Block]:
        out = metrics_section(fig)
        if "metrics.png" in plots:
            out.append(_img("base vs aligned", "metrics.png", plots["metrics.png"]))
        return out

    def curves() -> list[Block]:
        if "curves.png" in plots:
            return [_h(2, "Training curves"),
                    _img("training curves", "curves.png", plots["curves.png"])]
        return [_h(2, "Training curves"), _p("Missing: no curves.json of any run.")]

    def stage_times() -> list[Block]:
        rows = [[s["stage"], s["action"], str(s["seconds_tonight"]),
                 "-" if s["seconds_when_run"] is None else str(s["seconds_when_run"])]
                for s in fig.get("stages", [])]
        return [_h(2, "Stage times"),
                _table(["stage", "tonight", "seconds tonight", "seconds of its last run"], rows)]

    sections = {"results": results, "base vs aligned": metrics, "training curves": curves,
                "LLM profiles": lambda: llm_section(fig), "stage times": stage_times,
                "example profiles": lambda: profiles_section(fig),
                "recommendations": lambda: recommendations_section(fig)}
    missing = list(missing)
    for name, build in sections.items():
        try:
            blocks += build()
        except Exception as exc:  # unexpected figures: lose one section, not the report
            missing.append(f"the {name} section could not be rendered ({_why(exc)})")
    if missing:
        blocks += [_h(2, "Missing or unreadable inputs"), _ul(missing)]
    return blocks


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out += ["#" * b[1] + " " + md_escape(b[2]), ""]
        elif kind == "p":
            out += [md_escape(b[1]), ""]
        elif kind == "table":
            out.append("| " + " | ".join(md_escape(h) for h in b[1]) + " |")
            out.append("|" + "---|" * len(b[1]))
            out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in b[2]]
            out.append("")
        elif kind == "img":
            out += [f"![{md_escape(b[1])}]({b[2]})", ""]
        elif kind == "ul":
            out += [f"- {md_escape(x)}" for x in b[1]] + [""]
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
        "color:#222}table{border-collapse:collapse;margin:.5rem 0 1rem}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top;text-align:left}"
        "th{background:#f4f4f4}img{max-width:100%}")


def render_html(blocks: list[Block]) -> str:
    """One self-contained page: inline CSS, PNGs as data: URIs, no script, nothing fetched."""
    title = next((b[2] for b in blocks if b[0] == "h"), "recalign report")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html_escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{html_escape(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{html_escape(b[1])}</p>")
        elif kind == "table":
            out.append("<table><thead><tr>" + "".join(f"<th>{html_escape(h)}</th>" for h in b[1])
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html_escape(c)}</td>" for c in row) + "</tr>"
                    for row in b[2]]
            out.append("</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[3]).decode("ascii")
            out.append(f'<p><img alt="{html_escape(b[1])}" src="data:image/png;base64,{data}">'
                       "</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{html_escape(x)}</li>" for x in b[1]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def report_dir(root: str, dataset: str) -> str:
    return join(root, dataset, "report")


def report_html_uri(root: str, dataset: str) -> str:
    """Where :func:`write_report` puts the self-contained HTML report."""
    return f"{report_dir(root, dataset)}/report.html"


def write_reports(root: str, dataset: str, fig: dict[str, Any]) -> dict[str, str]:
    """``<root>/<dataset>/report/``: report.md (with curves.png and metrics.png beside it) and
    a self-contained report.html; returns {"markdown": uri, "html": uri}."""
    out = report_dir(root, dataset)
    fs, base = fsspec_filesystem(out)
    fs.makedirs(base, exist_ok=True)
    missing = list(fig.get("missing") or [])
    train = fig.get("train") or {}
    plots: dict[str, bytes] = {}
    curves = run_curves(train, missing)
    draw = {"curves.png": (lambda: curves_png(curves)) if curves else None,
            "metrics.png": (lambda: metrics_png(fig)) if metric_stats(train) else None}
    for name, make in draw.items():
        if make is None:
            continue
        try:
            plots[name] = make()
        except Exception as exc:  # a plot is not worth losing the report for
            missing.append(f"{name} could not be drawn ({_why(exc)})")
    for name, png in plots.items():
        with fs.open(f"{base}/{name}", "wb") as f:
            f.write(png)
    blocks = document(fig, plots, missing)
    with fs.open(f"{base}/report.md", "wb") as f:  # UTF-8 whatever the locale says
        f.write(render_markdown(blocks).encode("utf-8"))
    with fs.open(f"{base}/report.html", "wb") as f:
        f.write(render_html(blocks).encode("utf-8"))
    return {"markdown": f"{out}/report.md", "html": f"{out}/report.html"}


def write_report(root: str, dataset: str, fig: dict[str, Any]) -> str:
    """:func:`write_reports`; returns report.md's URI (report.html is beside it)."""
    return write_reports(root, dataset, fig)["markdown"]
