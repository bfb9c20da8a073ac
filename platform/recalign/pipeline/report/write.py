"""Writing the report: report.md with its PNGs beside it and a self-contained report.html in
``<root>/<dataset>/report/``."""

from __future__ import annotations

from typing import Any

from recalign.pipeline.report.common import _why
from recalign.pipeline.report.plots import curves_png, metrics_png, run_curves
from recalign.pipeline.report.render import document, render_html, render_markdown
from recalign.pipeline.report.stats import metric_stats
from recalign.storage.uri import fsspec_filesystem, join


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
