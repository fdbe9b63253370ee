"""Frontier figures of a sweep: FVU and CE loss recovered against L0, and the dead fraction against the swept key.

They read a sweep table (`sweep.csv`, docs/sweeps.md): one row per point with `point`, `status`, one column per
swept key, `run_dir`, `report` (relative to the sweep folder, empty when the point has none) and the point's scalar
metrics. Only finished points are drawn; `not_drawn` lists the others with their reason, and each figure's subtitle
names them. The x axis of the dead-fraction figure is `latents.k` when k is swept, else the first swept key
(categorical when its values are not all numbers); in a grid every value of the other key(s) is a trace of its own.
Each marker carries its point's report link (URL-quoted, relative to the sweep folder) as `customdata`, and hover
text with the point's name and every metric of `HOVER` it has. Plotly draws tags in hover text, names and ticks as
markup, so every string from the table goes through `esc`. Show them with `kit.view.figures.show` (or embed them as
`kit.report.sweep` does) and they still draw in a static HTML export.
"""
from __future__ import annotations

import math
from numbers import Real
from urllib.parse import quote

import pandas as pd
import plotly.graph_objects as go

from kit.view.figures import LAYOUT, ORANGE
from kit.view.widgets import esc

FIXED = ("point", "status", "run_dir", "report")
"""The columns of a sweep table that are neither swept keys nor metrics."""
HOVER = ("l0", "fvu", "explained_variance", "ce_loss_recovered", "ce_loss_recovered_vs_mean", "kl", "delta_ce",
         "dead_frac", "dead_frac_eval", "topk_retention", "tokens_seen", "step_seconds", "train_seconds")
"""The metrics a marker's hover text shows (those the table has)."""
LABELS = {"l0": "L0 (active latents per token)", "fvu": "FVU (unexplained variance)",
          "ce_loss_recovered": "CE loss recovered", "dead_frac": "dead fraction"}


def swept_keys(table: pd.DataFrame) -> list[str]:
    """The swept keys of a sweep table: its columns between `status` and `run_dir`."""
    cols = list(table.columns)
    return cols[cols.index("status") + 1:cols.index("run_dir")]


def main_key(keys: list[str]) -> str:
    """The key the dead-fraction figure runs along and the L0 figures label points by: k when it is swept."""
    return "latents.k" if "latents.k" in keys else keys[0]


def report_link(row) -> str:
    """A point's report.html, or its folder when it has none, relative to the sweep folder and URL-quoted."""
    report = str(row.get("report", "") or "")
    target = report if report and report != "nan" else str(row["run_dir"]).rstrip("/") + "/"
    return quote(target, safe="/=,")


def not_drawn(table: pd.DataFrame) -> pd.DataFrame:
    """The points that are not finished: `point`, `state` (stopped or unfinished), `reason` and `link` (its report
    or folder, as `report_link`)."""
    rows = table[table["status"] != "finished"]
    parts = [str(s).partition(":") for s in rows["status"]]
    return pd.DataFrame({"point": rows["point"].astype(str).tolist(), "state": [p[0].strip() for p in parts],
                         "reason": [p[2].strip() for p in parts],
                         "link": [report_link(r) for _, r in rows.iterrows()]})


def numeric(values) -> pd.Series | None:
    """The values as floats when every one is a finite number (a numeric axis), else None (a categorical one)."""
    nums = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    return nums.astype(float) if len(nums) and nums.notna().all() and all(map(math.isfinite, nums)) else None


def fvu_vs_l0(table: pd.DataFrame, keys: list[str] | None = None) -> go.Figure:
    """FVU against L0 of the finished points: lower left is better (fewer active latents, less unexplained)."""
    return _frontier(table, keys, "l0", "fvu", "FVU against L0")


def ce_recovered_vs_l0(table: pd.DataFrame, keys: list[str] | None = None) -> go.Figure:
    """CE loss recovered against L0 of the finished points: upper left is better."""
    return _frontier(table, keys, "l0", "ce_loss_recovered", "CE loss recovered against L0")


def dead_vs_key(table: pd.DataFrame, keys: list[str] | None = None) -> go.Figure:
    """The dead fraction (training window) of the finished points against the swept key."""
    keys = keys or swept_keys(table)
    return _frontier(table, keys, main_key(keys), "dead_frac", f"Dead fraction against {main_key(keys)}")


def frontier_figures(table: pd.DataFrame, keys: list[str] | None = None) -> dict[str, go.Figure]:
    """The three figures by the metric on their y axis: `fvu`, `ce_loss_recovered`, `dead_frac`."""
    keys = keys or swept_keys(table)
    return {"fvu": fvu_vs_l0(table, keys), "ce_loss_recovered": ce_recovered_vs_l0(table, keys),
            "dead_frac": dead_vs_key(table, keys)}


def hover_text(row, keys: list[str]) -> str:
    """A marker's hover text: the point's name, its swept values and every `HOVER` metric it has."""
    lines = [f"<b>{esc(row['point'])}</b>"] + [f"{esc(k)} = {esc(row[k])}" for k in keys]
    for name in HOVER:
        value = row.get(name)
        if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
            lines.append(f"{name} {value:,.0f}" if name == "tokens_seen" else f"{name} {value:.4g}")
    has_report = str(row.get("report", "") or "") not in ("", "nan")
    return "<br>".join(lines + [f"click: open its {'report' if has_report else 'folder'}"])


def _frontier(table: pd.DataFrame, keys: list[str] | None, x: str, y: str, title: str) -> go.Figure:
    """One trace per value of the keys other than the main one, its points in the main key's order."""
    keys = keys or swept_keys(table)
    main, others = main_key(keys), [k for k in keys if k != main_key(keys)]
    done = table[table["status"] == "finished"]
    for col in dict.fromkeys((x, y)):  # a point without a finite value of a metric drawn here is left out
        if col != main:
            vals = pd.to_numeric(done[col], errors="coerce") if col in done else pd.Series(float("nan"), done.index)
            done = done[vals.notna() & vals.abs().lt(math.inf)]
    by_value = numeric(table[main]) is not None  # points in the order of a numeric main key, else as listed
    fig = go.Figure(layout=dict(LAYOUT, title=dict(text=esc(title), subtitle=dict(text=_subtitle(table))),
                                xaxis_title=esc(LABELS.get(x, x)), yaxis_title=esc(LABELS.get(y, y)),
                                legend_title_text=esc(", ".join(others)), margin=dict(LAYOUT["margin"], t=70)))
    groups = done.groupby(others, sort=False, dropna=False) if others else [((), done)]
    for values, rows in groups:
        values = values if isinstance(values, tuple) else (values,)
        if by_value:
            rows = rows.assign(_o=numeric(rows[main]).to_numpy()).sort_values("_o", kind="stable")
        nums = numeric(rows[x]) if len(rows) else None
        xs = nums.tolist() if nums is not None else [esc(v) for v in rows[x]]
        name = ", ".join(f"{k}={v}" for k, v in zip(others, values)) or "finished points"
        fig.add_trace(go.Scatter(
            x=xs, y=pd.to_numeric(rows[y]).astype(float).tolist(), name=esc(name), showlegend=bool(others),
            mode="lines+markers" if x == main else "lines+markers+text",
            text=None if x == main else [f"{esc(main.rsplit('.', 1)[-1])}={esc(v)}" for v in rows[main]],
            textposition="top center", customdata=[report_link(r) for _, r in rows.iterrows()],
            hovertext=[hover_text(r, keys) for _, r in rows.iterrows()], hovertemplate="%{hovertext}<extra></extra>",
            marker=dict(size=9), line=dict(color=ORANGE) if not others else None))
    _axes(fig, done, x, y, main)
    return fig


def _axes(fig: go.Figure, done: pd.DataFrame, x: str, y: str, main: str) -> None:
    """Log x for positive numbers spanning 4x or more (k doubles, L0 follows), the swept values as ticks,
    categories when the key is not numeric, percentages for shares."""
    xs = numeric(done[x]) if len(done) else None
    if x == main and xs is None and len(done):
        fig.update_xaxes(type="category")
    elif xs is not None and (xs > 0).all() and xs.max() >= 4 * xs.min():
        fig.update_xaxes(type="log")
    if x == main and xs is not None:
        ticks = sorted(set(xs.tolist()))
        fig.update_xaxes(tickvals=ticks, ticktext=[f"{v:g}" for v in ticks])
    if y in ("ce_loss_recovered", "dead_frac"):
        fig.update_yaxes(tickformat=".1%")


def _subtitle(table: pd.DataFrame) -> str:
    """Which points are not drawn, and why (reasons cut to 60 characters; the sweep page has them whole)."""
    rest = not_drawn(table)
    if rest.empty:
        return ""
    parts = [esc(p) + (f" ({esc(s)}: {esc(r[:60] + ('…' if len(r) > 60 else ''))})" if r else f" ({esc(s)})")
             for p, s, r, _ in rest.itertuples(index=False)]
    return "not drawn: " + "; ".join(parts)
