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

from recalign.pipeline.report.common import (EXAMPLES, HIT, METRICS, REC_USERS, TEXT_LIMIT,
                                             TITLE_LIMIT, TOP_K, VARIANTS)
from recalign.pipeline.report.figures import (example_profiles, example_recommendations, gather,
                                              read_embeddings, top_k)
from recalign.pipeline.report.plots import curves_png, metrics_png, run_curves
from recalign.pipeline.report.render import (Block, bounded, document, html_escape, llm_section,
                                             md_escape, metrics_section, profiles_section,
                                             recommendations_section, render_html,
                                             render_markdown)
from recalign.pipeline.report.stats import (Stat, llm_throughput, metric_stats, relative_gain,
                                            seed_runs)
from recalign.pipeline.report.table import table_rows
from recalign.pipeline.report.write import (report_dir, report_html_uri, write_report,
                                            write_reports)

__all__ = [
    "EXAMPLES", "HIT", "METRICS", "REC_USERS", "TEXT_LIMIT", "TITLE_LIMIT", "TOP_K", "VARIANTS",
    "Block", "Stat", "bounded", "curves_png", "document", "example_profiles",
    "example_recommendations", "gather", "html_escape", "llm_section", "llm_throughput",
    "md_escape", "metric_stats", "metrics_png", "metrics_section", "profiles_section",
    "read_embeddings", "recommendations_section", "relative_gain", "render_html",
    "render_markdown", "report_dir", "report_html_uri", "run_curves", "seed_runs", "table_rows",
    "top_k", "write_report", "write_reports",
]
