"""The sweep page: `sweep.md` and `sweep.html` at the top of a sweep folder, beside its points' run folders.

`write_sweep_report(sweep_dir)` reads `sweep.json` (grid, base config, points) and `sweep.csv` (one row per point,
docs/sweeps.md) as they are: `kit.sweep.sweep_table` writes the table from the points' folders, and the app layer
calls it first (`python -m kit report SWEEP_DIR` does). The page holds the frontier table, whose rows link to each
point's report.html, the three frontier figures of `kit.view.frontier`, and the points that are not drawn with their
reason. Links are relative, so the folder can be moved or copied. sweep.html carries plotly.js inline, so it draws
offline, and clicking a marker opens that point's report; sweep.md has the same table and text (markdown cannot draw
the figures). Every string from the files goes through `esc` (HTML) or `md` (markdown).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.io as pio

from kit.report.html import CSS, html_table
from kit.report.markdown import md, md_table
from kit.view.figures import library_html
from kit.view.frontier import FIXED, frontier_figures, not_drawn, report_link
from kit.view.widgets import esc

COLUMNS = {"l0": "L0", "fvu": "FVU", "ce_loss_recovered": "CE loss recovered", "dead_frac": "dead fraction",
           "step_seconds": "step seconds", "train_seconds": "sweep loop seconds"}
"""The metrics of the frontier table by their sweep.csv column. Wall time: `step_seconds` is the point's own train
steps, `train_seconds` the whole sweep loop's (one store fed every point, so it is shared)."""
FIGURE_HEIGHT = 380
CLICK = ("var gd = document.getElementById('{plot_id}');"
         "gd.on('plotly_click', function (ev) { var p = ev.points && ev.points[0];"
         " if (p && p.customdata) { window.location.href = p.customdata; } });")
"""Run after each figure is drawn: a click on a marker opens the link in its `customdata` (its point's report)."""
READING = ("Each marker is a finished point; hover for all its metrics. FVU against L0: lower left is better, and the "
           "points trace the sparsity-fidelity frontier (as k grows, L0 rises and FVU falls, with diminishing "
           "returns). CE loss recovered against L0: upper left is better; it is what the language model keeps of "
           "the loss the MLP recovers when the transcoder replaces it. Dead fraction: latents that did not fire in "
           "the last dead_window training tokens; a setting whose dead fraction climbs wastes width. A good choice "
           "is the smallest k past which FVU and CE loss recovered stop improving much, with few dead latents.")
@dataclass(frozen=True)
class SweepData:
    """What the sweep page shows, read once from a sweep folder."""

    folder: Path
    """The sweep folder."""
    grid: dict[str, list[str]]
    """The swept keys and their values as given (sweep.json)."""
    base: dict
    """The base config every point overrides (sweep.json)."""
    table: pd.DataFrame
    """sweep.csv: the fixed columns and the swept values as text, the metrics as numbers (NaN when missing)."""

    @property
    def keys(self) -> list[str]:
        return list(self.grid)


def load_sweep(sweep_dir) -> SweepData:
    """Read `sweep.json` and `sweep.csv` of a sweep folder; swept values stay text ('1e-3' stays '1e-3')."""
    folder = Path(sweep_dir)
    for name in ("sweep.json", "sweep.csv"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing: a sweep writes it (`python -m kit report "
                                    f"{folder}` rebuilds sweep.csv from the points' folders)")
    meta = json.loads((folder / "sweep.json").read_text())
    raw = pd.read_csv(folder / "sweep.csv", dtype=str, keep_default_na=False)
    if missing := [c for c in (*FIXED, *meta["grid"]) if c not in raw.columns]:
        raise ValueError(f"{folder / 'sweep.csv'} lacks the columns {missing}: rebuild it with `python -m kit "
                         f"report {folder}`")
    metrics = {c: pd.to_numeric(raw[c], errors="coerce") for c in raw.columns if c not in (*FIXED, *meta["grid"])}
    return SweepData(folder, meta["grid"], meta.get("base", {}), raw.assign(**metrics))


def sweep_title(sweep: SweepData) -> str:
    """The sweep's name with the model, layer and text every point trained on."""
    b = sweep.base
    return f"{b.get('name', sweep.folder.name)}: {b.get('model', '?')}, layer {b.get('layer', '?')}, on " \
           f"{b.get('source', '?')}"


def grid_text(sweep: SweepData) -> str:
    """'latents.k = 16, 32 × train.lr = 1e-3, 3e-3'."""
    return " × ".join(f"{k} = {', '.join(v)}" for k, v in sweep.grid.items())


def counts_text(sweep: SweepData) -> str:
    """How many points there are and in which state."""
    state = pd.Series([str(s).partition(":")[0] for s in sweep.table["status"]], dtype=object).value_counts()
    parts = [f"{state[s]} {s}" for s in ("finished", "stopped", "unfinished") if s in state]
    steps = sweep.base.get("train", {}).get("steps", "?")
    return (f"{len(sweep.table)} points ({', '.join(parts) or 'none yet'}), {steps} steps each, fed the same "
            "batches by one activation store.")


def frontier_frame(sweep: SweepData) -> pd.DataFrame:
    """point, the swept values, L0, FVU, CE loss recovered, dead fraction, wall times and status; a missing metric
    is an empty cell."""
    t = sweep.table
    cols = {"point": t["point"], **{k: t[k] for k in sweep.keys},
            **{label: t[c].astype(object).where(t[c].notna(), "") for c, label in COLUMNS.items() if c in t},
            "status": t["status"]}
    return pd.DataFrame(cols).reset_index(drop=True)


def config_frame(base: dict) -> pd.DataFrame:
    """The base config as (field, value) rows, sections flattened to dotted names."""
    flat = {f"{s}.{k}": v for s, d in base.items() if isinstance(d, dict) for k, v in d.items()}
    return pd.DataFrame({"field": [k for k, v in base.items() if not isinstance(v, dict)] + list(flat),
                         "value": [str(v) for v in base.values() if not isinstance(v, dict)] +
                                  [str(v) for v in flat.values()]})


def markdown_sweep(sweep: SweepData) -> str:
    """The whole sweep.md."""
    table = frontier_frame(sweep)
    links = [report_link(r) for _, r in sweep.table.iterrows()]
    table["point"] = [f"[{md(p)}]({link})" for p, link in zip(table["point"], links)]
    out = [f"# Sweep: {md(sweep_title(sweep))}\n\n", f"Grid: {md(grid_text(sweep))}. {md(counts_text(sweep))}\n\n",
           "## Frontier\n\n", "Each point links to its report (or its folder when it has none).\n\n",
           md_table(table, len(table) or 1, raw=("point",)), "\n## Figures\n\n",
           "sweep.html draws FVU and CE loss recovered against L0 and the dead fraction against the swept key, from "
           f"the table above; click a marker there to open its point's report. {md(READING)}\n"]
    rest = not_drawn(sweep.table)
    if len(rest):
        out += ["\n## Not drawn\n\n"] + [f"- [{md(p)}]({link}): {md(s)}" + (f": {md(r)}" if r else "") + "\n"
                                         for p, s, r, link in rest.itertuples(index=False)]
    out += ["\n## Base config\n\n", md_table(config_frame(sweep.base), 1000)]
    return "".join(out)


def figure_html(fig, div_id: str) -> str:
    """A figure as a div drawn by the page's inline plotly.js, with the click handler."""
    return pio.to_html(fig, include_plotlyjs=False, include_mathjax=False, full_html=False, div_id=div_id,
                       default_width="100%", default_height=FIGURE_HEIGHT, post_script=CLICK, validate=False)


def html_sweep(sweep: SweepData) -> str:
    """The whole sweep.html: plotly.js once in the head, then the table, the figures and the points not drawn."""
    table = frontier_frame(sweep)
    links = [report_link(r) for _, r in sweep.table.iterrows()]
    table["point"] = [f'<a href="{esc(link)}">{esc(p)}</a>' for p, link in zip(table["point"], links)]
    figures = frontier_figures(sweep.table, sweep.keys)
    for fig in figures.values():
        fig.update_layout(height=FIGURE_HEIGHT)
    divs = "".join(f'<div class="figure">{figure_html(fig, f"frontier-{name}")}</div>'
                   for name, fig in figures.items())
    listed = "".join(f'<li><a href="{esc(link)}">{esc(p)}</a>: {esc(s)}' + (f": {esc(r)}" if r else "") + "</li>"
                     for p, s, r, link in not_drawn(sweep.table).itertuples(index=False))
    not_drawn_html = (f'<section id="not-drawn"><h2>Not drawn</h2><p>Points that did not finish are left off the '
                      f"figures:</p><ul>{listed}</ul></section>" if listed else "")
    title = esc(sweep_title(sweep))
    css = CSS + ".figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Sweep: {title}</title>'
            f"<style>{css}</style>{library_html()}</head><body><h1>Sweep: {title}</h1>"
            f"<p>Grid: {esc(grid_text(sweep))}. {esc(counts_text(sweep))}</p>"
            '<nav><a href="#frontier">Frontier</a><a href="#figures">Figures</a>'
            + ('<a href="#not-drawn">Not drawn</a>' if listed else "") + '<a href="#config">Base config</a></nav>'
            '<section id="frontier"><h2>Frontier</h2><p>Each point links to its report (or its folder when it has '
            "none). Step seconds: the point's own train steps; sweep loop seconds: the whole loop, shared by all "
            f"points.</p>{html_table(table, len(table) or 1, raw=('point',))}</section>"
            f'<section id="figures"><h2>Figures</h2><p>{esc(READING)} Click a marker to open its report.</p>'
            f'<div class="figures">{divs}</div></section>{not_drawn_html}'
            f'<section id="config"><h2>Base config</h2><details><summary>every field</summary>'
            f"{html_table(config_frame(sweep.base), 1000)}</details></section></body></html>")


def write_sweep_report(sweep_dir) -> tuple[Path, Path]:
    """Write `sweep.md` and `sweep.html` at the top of the sweep folder from its sweep.json and sweep.csv; returns
    their paths."""
    sweep = load_sweep(sweep_dir)
    md_path, html_path = sweep.folder / "sweep.md", sweep.folder / "sweep.html"
    md_path.write_text(markdown_sweep(sweep), encoding="utf-8")
    html_path.write_text(html_sweep(sweep), encoding="utf-8")
    return md_path, html_path
