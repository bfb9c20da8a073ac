"""The results table (figure, value) that the demo prints and the report opens with."""

from __future__ import annotations

from typing import Any

from recalign.pipeline.report.common import METRICS, VARIANTS
from recalign.pipeline.report.stats import _fmt_stat, llm_throughput, metric_stats, relative_gain


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
