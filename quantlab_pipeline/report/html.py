"""One self-contained HTML page for a run (docs/reports.md): inline SVG charts and CSS, no script; its
Content-Security-Policy forbids every external resource, so it renders the same offline, from an
e-mail attachment or an archive. Sections: the whole window, then each month of a longer run.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import polars as pl

from quantlab_pipeline.core.display import FRONTIER_COLUMNS, FRONTIER_TOP, frontier_rows
from quantlab_pipeline.core.report_rows import headline_rows, spec_rows
from quantlab_pipeline.core.sweep_spec import Constraints
from quantlab_pipeline.report import charts
from quantlab_pipeline.report.charts import Chart
from quantlab_pipeline.storage.run_contents import MonthArtifacts, RunArtifacts

_POLICY = ' class="policy"'  # the policy column of that list

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1000px; padding: 1.5em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
dl.spec { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; } dt, th, p.aside { color: #666; }
dd, .policy { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.notice { background: #fff4e5; border-left: 4px solid #f0a020; padding: .6em 1em; margin: 1em 0; }
.badge { font-size: .7em; background: #f0a020; color: #fff; border-radius: 3px; padding: .1em .4em; }
table { border-collapse: collapse; margin: .5em 0 1em; } th { font-weight: normal; }
th, td { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: right; } .headline th, .policy { text-align: left; }
figure.chart { margin: 1em 0 1.8em; } figure.chart svg { display: block; max-width: 100%; height: auto; }
nav a { margin-right: .8em; }
"""
# No script, no remote anything: styles and images inline only.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class Section:
    anchor: str
    heading: str
    months: tuple[MonthArtifacts, ...]
    charts: tuple[Chart, ...]
    headline: dict[str, str]
    asides: tuple[str, ...]
    top_policies: tuple[tuple[str, ...], ...] = ()  # an optimization month's best ranked (`FRONTIER_COLUMNS`)


def _concat(months: tuple[MonthArtifacts, ...], artifact: str) -> pl.DataFrame | None:
    frames = [f for m in months if (f := m.get(artifact)) is not None]
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def build_section(
    run_type: str, anchor: str, heading: str, months: tuple[MonthArtifacts, ...], constraints: Constraints | None
) -> Section:
    """The charts of `months` together: trades charts (policy), truth charts, frontier (one month)."""
    alerts, paths, trades = (_concat(months, a) for a in ("alerts", "paths", "trades"))
    built: list[Chart] = []
    asides: list[str] = []
    top: tuple[tuple[str, ...], ...] = ()
    if run_type == "policy":
        if trades is None:
            asides.append("No trades artifact yet, so no trade charts.")
        else:
            built += [charts.return_distribution(trades), charts.exit_reasons(trades), charts.mae_vs_return(trades)]
    if run_type == "optimization":
        frontier = _concat(months, "frontier")
        if len(months) > 1:
            asides.append("The frontier is computed per month (medians do not add up); see each month's section.")
        elif frontier is None:
            asides.append("No frontier artifact yet, so no frontier chart.")
        else:
            built.append(charts.frontier(frontier, constraints))
            top = tuple(frontier_rows(frontier, FRONTIER_TOP))
            n = frontier.get_column("caller_name").is_null().sum()
            asides.append(f"The {len(top)} best ranked of {n:,} policies (all callers); all: results/frontier.parquet")
    equity, portfolio = _concat(months, "equity"), _concat(months, "portfolio")
    if anchor == "window" and equity is not None and portfolio is not None:  # the drawdown needs the window
        built.insert(0, charts.equity(equity, portfolio.item(-1, "capital")))
    if paths is None:
        asides.append("No truth-layer artifact (paths) yet, so no truth charts.")
    else:
        built += [charts.callers(paths), charts.time_to_2x(paths)]
    headline = headline_rows(run_type, alerts, paths, trades, portfolio)
    return Section(anchor, heading, months, tuple(built), headline, tuple(asides), top)


def build_sections(run: RunArtifacts) -> list[Section]:
    """The whole window, then one section per month when there are several."""
    present = tuple(m for m in run.months if m.frames)
    constraints = run.constraints
    first, last = present[0].month, present[-1].month
    span = first if first == last else f"{first} to {last}"
    sections = [build_section(run.run_type, "window", f"Whole window ({span})", present, constraints)]
    if len(present) > 1:
        sections += [build_section(run.run_type, m.month, m.month, (m,), constraints) for m in present]
    for section in sections:  # an optimization month's PBO and SPA in words (docs/confidence.md)
        if len(section.months) == 1 and (words := run.overfitting_words(section.months[0])):
            section.headline["overfitting"] = words
    return sections


def _policies_html(rows: tuple[tuple[str, ...], ...]) -> str:
    def cells(tag: str, row: tuple[str, ...]) -> str:
        return "".join(f"<{tag}{_POLICY * (i == 1)}>{html.escape(v)}</{tag}>" for i, v in enumerate(row))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', FRONTIER_COLUMNS)}</tr></thead><tbody>{body}</tbody></table>"


def _section_html(section: Section) -> str:
    e = html.escape
    badge = ' <span class="badge">incomplete</span>' if any(not m.complete for m in section.months) else ""
    parts = [f'<section id="{e(section.anchor)}">', f"<h2>{e(section.heading)}{badge}</h2>"]
    if section.headline:
        cells = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in section.headline.items())
        parts.append(f'<table class="headline">{cells}</table>')
    parts += [f'<p class="aside">{e(a)}</p>' for a in section.asides]
    if section.top_policies:
        parts.append(_policies_html(section.top_policies))
    for chart in section.charts:
        anchor = f"{section.anchor}-{chart.key}"
        parts.append(f'<figure class="chart" id="{e(anchor)}" data-chart="{e(chart.key)}">{chart.svg(anchor)}</figure>')
    parts.append("</section>")
    return "\n".join(parts)


def render_html(run: RunArtifacts, sections: list[Section]) -> str:
    """The page; deterministic for the same artifacts (no generation time, fixed SVG ids)."""
    e = html.escape
    months = ", ".join(f"{m.month} ({m.status})" for m in run.months)
    spec = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in (spec_rows(run.spec) | {"months": months}).items())
    notices = [
        f'<div class="notice"><strong>Incomplete month {e(m.month)}</strong>: {e(m.note)}. '
        + ("Its artifacts that exist are included below." if m.frames else "Nothing of it is included.")
        + "</div>"
        for m in run.incomplete
    ]
    nav = " ".join(f'<a href="#{e(s.anchor)}">{e(s.heading)}</a>' for s in sections)
    title = f"quantlab report — {run.run_type} run {run.run_id}"
    return "\n".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
            f'<h1>Backtest report: {e(run.run_type)} run</h1>\n<dl class="spec">{spec}</dl>',
            *notices,
            f"<nav>{nav}</nav>",
            *(_section_html(s) for s in sections),
            "</body></html>\n",
        ]
    )
