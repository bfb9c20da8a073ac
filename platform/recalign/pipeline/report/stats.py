"""Statistics of the train stage's runs (mean ± std over seeds, relative gain) and the LLM's
throughput, with how a statistic is written."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from recalign.pipeline.report.common import METRICS, VARIANTS


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
