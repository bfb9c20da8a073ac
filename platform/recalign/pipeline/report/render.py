"""The report as a document of blocks (one section per figure) and its rendering to Markdown
and to self-contained HTML, every piece of data escaped and bounded."""

from __future__ import annotations

import base64
import html
from typing import Any

from recalign.pipeline.report.common import (EXAMPLES, HIT, METRICS, TEXT_LIMIT, TITLE_LIMIT,
                                             TOP_K, VARIANTS, _why)
from recalign.pipeline.report.stats import (Stat, _fmt_stat, llm_throughput, metric_stats,
                                            relative_gain)
from recalign.pipeline.report.table import table_rows


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
        for label, key in (("Training items", "train_titles"), ("Test items", "test_titles")):
            if u.get(key):
                blocks.append(_p(f"{label}: " + "; ".join(bounded(t, TITLE_LIMIT)
                                                         for t in u[key]) + "."))
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
