"""The demo's report: a results table (base vs aligned, LLM usage, stage times) as text and
Markdown, and PNG plots (validation curves of both runs, base-vs-aligned test metrics).

Built from the nightly's completion markers, so a second (skipped) night reports the same
figures as the night that computed them.
"""

from __future__ import annotations

import io
import json
from typing import Any

from recalign.pipeline.stages import STAGES, MarkerStore
from recalign.storage.uri import fsspec_filesystem, join

METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")


def gather(root: str, dataset: str, night: dict[str, Any]) -> dict[str, Any]:
    """Figures of the last completed run of every stage, plus tonight's actions and times."""
    store = MarkerStore(root, dataset)
    markers = {s: store.get(s) for s in STAGES}  # each marker read once
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
    return {"dataset": dataset, "stages": stages, "llm": prof, "train": train, "export": export,
            "night_seconds": night.get("seconds")}


def _metric(run: dict[str, Any] | None, m: str) -> float | None:
    return ((run or {}).get("test") or {}).get(m)


def table_rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    base, aligned = fig["train"].get("base"), fig["train"].get("aligned")
    for m in METRICS:
        b, a = _metric(base, m), _metric(aligned, m)
        gain = f" ({(a / b - 1) * 100:+.1f} %)" if a is not None and b else ""
        rows.append((f"test {m}: base / aligned",
                     f"{b if b is None else round(b, 4)} / {a if a is None else round(a, 4)}{gain}"))
    llm = fig["llm"]
    rows.append(("LLM requests (ok / failed)", f"{llm.get('requests', 0)} "
                 f"({llm.get('ok', 0)} / {llm.get('failed', 0)})"))
    rows.append(("LLM tokens (prompt / completion)",
                 f"{llm.get('prompt_tokens', 0)} / {llm.get('completion_tokens', 0)}"))
    if fig["export"]:
        rows.append(("index (kind, recall@100)",
                     f"{fig['export'].get('kind')}, {fig['export'].get('recall')}"))
    for s in fig["stages"]:
        when = s["seconds_when_run"]
        rows.append((f"stage {s['stage']}", f"{s['action']} tonight, {s['seconds_tonight']} s "
                     f"(last run {when} s)" if when is not None else f"{s['action']}"))
    rows.append(("night total", f"{fig['night_seconds']} s"))
    return rows


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def curves_png(curves: dict[str, dict[str, Any]], metric: str = "recall@20") -> bytes:
    """Validation ``metric`` per evaluated epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, c in curves.items():
        ax.plot(c["valid_epoch"], c["valid"].get(metric, []), marker="o", ms=3, label=label)
    ax.set_xlabel("epoch"), ax.set_ylabel(f"validation {metric}"), ax.legend()
    ax.set_title("training curves")
    return _png(fig)


def metrics_png(fig_data: dict[str, Any]) -> bytes:
    """Grouped bars: test metrics of base and aligned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base, aligned = fig_data["train"].get("base"), fig_data["train"].get("aligned")
    x = np.arange(len(METRICS))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, (label, run) in enumerate((("base", base), ("aligned", aligned))):
        ax.bar(x + (k - 0.5) * 0.38, [_metric(run, m) or 0.0 for m in METRICS], 0.38, label=label)
    ax.set_xticks(x, METRICS), ax.set_ylabel("test"), ax.legend()
    ax.set_title("base vs aligned")
    return _png(fig)


def write_report(root: str, dataset: str, fig: dict[str, Any]) -> str:
    """``<root>/<dataset>/report/``: report.md, curves.png, metrics.png; returns report.md's URI."""
    out = join(root, dataset, "report")
    fs, base = fsspec_filesystem(out)
    fs.makedirs(base, exist_ok=True)
    curves = {}
    for label, run in fig["train"].items():
        run_dir = (run or {}).get("run_dir")
        if run_dir:
            rfs, rbase = fsspec_filesystem(run_dir)
            try:
                with rfs.open(f"{rbase}/curves.json", "r") as f:
                    curves[label] = json.load(f)
            except FileNotFoundError:
                pass
    with fs.open(f"{base}/curves.png", "wb") as f:
        f.write(curves_png(curves))
    with fs.open(f"{base}/metrics.png", "wb") as f:
        f.write(metrics_png(fig))
    lines = [f"# recalign demo: {dataset}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in table_rows(fig)]
    lines += ["", "![training curves](curves.png)", "", "![base vs aligned](metrics.png)", ""]
    with fs.open(f"{base}/report.md", "w") as f:
        f.write("\n".join(lines))
    return f"{out}/report.md"
