"""The report's PNG plots: training curves of every run and base vs aligned test metrics."""

from __future__ import annotations

import io
import json
from typing import Any

from recalign.pipeline.report.common import METRICS, VARIANTS, _why
from recalign.pipeline.report.stats import metric_stats, seed_runs
from recalign.storage.uri import fsspec_filesystem


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
