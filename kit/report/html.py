"""report.html: one self-contained page, no script and no external resource (inline CSS, SVG line charts,
CSS bars and a coloured HTML table for the latent × domain shares), so it opens offline and stays small.

Every piece of text from the run folder or the interpretation goes through `kit.view.widgets.esc`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kit.report.data import (EVAL_CAPTION, SPECIALIZATION_CAPTIONS, RunData, dict_frame, example_row, fmt, lens_frame,
                             report_title,
                             metrics_frame, nulls_frame, specialized_frame, summary_frame, top_frame,
                             top_samples_caption)
from kit.report.holds_up import holds_up_parts
from kit.view.widgets import act_colour, esc, profile_bars, profile_caption, sample_card, token_highlight

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1120px;margin:20px auto;
padding:0 16px;color:#111;background:#fff;line-height:1.45}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #e5e7eb;padding-bottom:4px;margin-top:30px}
h3{font-size:15px}nav a{margin-right:12px;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #e5e7eb;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}.charts{display:flex;flex-wrap:wrap;gap:10px}
.notice{white-space:pre-wrap;font-size:12px;background:#fffbeb;border:1px solid #fde68a;padding:8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:0 14px}
.caveat{border-left:3px solid #f59e0b;padding:2px 10px;color:#444}
"""
SECTIONS = [("training", "Training"), ("summary", "Summary"), ("top", "Top latents"), ("domains", "Domains"),
            ("specialization", "Specialization"), ("holds_up", "Does it hold up?"), ("patterns", "Text patterns"),
            ("cards", "Latent cards"), ("attribution", "Attribution")]


def svg_line(x, y, title: str, width: int = 340, height: int = 150) -> str:
    """A line chart as inline SVG (no script): the curve, its title, and the min/max of both axes."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return ""
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), 400)).round().astype(int))
    x, y = x[keep], y[keep]
    (x0, x1), (y0, y1) = (x.min(), x.max()), (y.min(), y.max())
    left, right, top, bottom = 56, 10, 24, 22
    px = left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)
    py = top + (1 - (y - y0) / ((y1 - y0) or 1)) * (height - top - bottom)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
    label = 'font-size="10" fill="#555"'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'<title>{esc(title)}</title><rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" '
            f'fill="#fff" stroke="#e5e7eb"/><text x="{left}" y="15" font-size="12">{esc(title)}</text>'
            f'<polyline fill="none" stroke="#ea580c" stroke-width="2" points="{points}"/>'
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" {label}>{fmt(y1)}</text>'
            f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" {label}>{fmt(y0)}</text>'
            f'<text x="{left}" y="{height - 6}" {label}>{fmt(x0)}</text>'
            f'<text x="{width - right}" y="{height - 6}" text-anchor="end" {label}>{fmt(x1)}</text></svg>')


def html_table(df: pd.DataFrame, max_rows: int = 30, raw: tuple[str, ...] = ()) -> str:
    """An HTML table of the first `max_rows` rows, every cell escaped except the columns in `raw`."""
    if df.empty:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for row in df.head(max_rows).itertuples(index=False):
        cells = [f"<td>{v}</td>" if c in raw else
                 f'<td{" class=num" if isinstance(v, (int, float, np.number)) else ""}>{esc(fmt(v))}</td>'
                 for c, v in zip(df.columns, row)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def domain_grid(profile: pd.DataFrame, latents: list) -> str:
    """Latent × domain shares as a table whose cells are shaded white → orange; latents without rows are left out."""
    latents = [i for i in latents if i in set(profile["latent"])]
    wide = profile[profile["latent"].isin(latents)].pivot_table(index="latent", columns="domain", values="share",
                                                                  fill_value=0.0)
    wide = wide.reindex(index=latents, columns=sorted(profile["domain"].unique()), fill_value=0.0)
    if wide.empty:
        return ""
    head = "<th>latent</th>" + "".join(f"<th>{esc(c)}</th>" for c in wide.columns)
    body = "".join(f"<tr><th>{int(i)}</th>" + "".join(
        f'<td class=num style="background:{act_colour(v, 1.0) or "#fff"}">{v:.0%}</td>' for v in row) + "</tr>"
        for i, row in zip(wide.index, wide.to_numpy()))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _training(run: RunData) -> str:
    charts = ""
    if not run.history.empty and "step" in run.history:
        names = ("lr", "loss", "fvu", "l0", "dead_frac", "tokens_per_s")
        charts = "".join(svg_line(run.history["step"], run.history[c], f"{c} over steps")
                         for c in names if c in run.history)
    train = run.config.get("train", {})
    schedule = ", ".join(f"{esc(k)} {esc(fmt(train[k]))}" for k in ("steps", "lr", "warmup_steps", "decay",
                                                                     "min_lr_ratio") if k in train)
    return (f"<p>Schedule: {schedule or 'not recorded'}.</p><div class=charts>{charts}</div>"
            f"<h3>Final metrics</h3>{html_table(metrics_frame(run), 100)}")


def _top(run: RunData, names: dict) -> str:
    top = top_frame(run, names)
    examples = []
    for latent in top["latent"]:
        r = example_row(run, int(latent))
        examples.append(token_highlight(r["context_tokens"], r["context_acts"], None, int(r["token_index"])).html
                        if r else "")
    return html_table(top.assign(example=examples), len(top), raw=("example",))


def _specialization(interp) -> str:
    parts = ["<h3>Against the nulls</h3>" + html_table(nulls_frame(interp), 60),
             f"<h3>Most specialized latents</h3><p>{esc(SPECIALIZATION_CAPTIONS[interp.config.level])}</p>"
             + html_table(specialized_frame(interp)),
             "<h3>Base rates</h3>" + html_table(interp.base_rates),
             f"<h3>Hierarchy</h3><p>{esc(interp.hierarchy_sentence)}</p>" + html_table(dict_frame(interp.hierarchy))]
    if interp.caveat:
        parts.append(f'<p class="caveat">{esc(interp.caveat)}</p>')
    return "".join(parts)


def _holds_up(interp) -> str:
    return "".join(f"<h3>{esc(title)}</h3>" + (f"<p>{esc(text)}</p>{html_table(table)}" if table is not None else
                                               f'<p class="caveat">{esc(text)}</p>')
                   for title, text, table in holds_up_parts(interp))


def _patterns(interp, shown: list) -> str:
    tables = (("Top words over all latents", interp.top_words_overall), ("Lengths", interp.length_stats),
              ("Logit lens of the strongest latents", lens_frame(interp, shown)))
    parts = [f"<h3>{title}</h3>" + html_table(table) for title, table in tables if len(table)]
    return "".join(parts) + (f'<p class="caveat">{esc(interp.logit_lens_caveat)}</p>' if parts else "")


def _domains(run: RunData) -> str:
    parts = [f"<p>{esc(top_samples_caption(run))}</p>", domain_grid(run.profile, run.shown)]
    if run.eval_profile is not None:
        parts += [f"<p>{esc(EVAL_CAPTION)}</p>", domain_grid(run.eval_profile, run.shown)]
    return "".join(parts)


def _cards(run: RunData, interp) -> str:
    names = interp.labels if interp else {}
    kept = (run.latents.set_index("latent")["topk_retention"] if "topk_retention" in run.latents
            else pd.Series(dtype=float))
    cards = []
    for i in run.shown:
        # the card's own bars are its top-sample shares; held-out document shares get bars of their own
        card = sample_card(run.rows[run.rows["latent"] == i], label=names.get(i), phase=run.phase,
                           retention=None if pd.isna(kept.get(i, np.nan)) else float(kept[i]),
                           logit_lens=interp.lens_of(i) if interp else None)
        cards.append(card.removesuffix("</div>") + _eval_bars(run, i) + "</div>")
    return f'<div class="cards">{"".join(cards)}</div>'


def _eval_bars(run: RunData, latent: int) -> str:
    prof = None if run.eval_profile is None else run.eval_profile[run.eval_profile["latent"] == latent]
    if prof is None or prof.empty:
        return ""
    return profile_bars(dict(zip(prof["domain"], prof["share"])), profile_caption(run.eval_profile))


def html_report(run: RunData, interp=None) -> str:
    """The whole report.html; `interp`: the run's Interpretation, or None."""
    body = {"training": _training(run), "summary": html_table(summary_frame(run)),
            "top": _top(run, interp.labels if interp else {}), "domains": _domains(run),
            "specialization": _specialization(interp) if interp else "",
            "holds_up": _holds_up(interp) if interp else "",
            "patterns": _patterns(interp, run.shown) if interp else "", "cards": _cards(run, interp),
            "attribution": f'<div class="notice">{esc(run.attribution)}</div>'}
    present = [(key, title) for key, title in SECTIONS if body[key]]
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in present)
    sections = "".join(f'<section id="{key}"><h2>{title}</h2>{body[key]}</section>' for key, title in present)
    name = esc(report_title(run))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Transcoder report: {name}</title>'
            f"<style>{CSS}</style></head><body><h1>Transcoder report: {name}</h1>"
            f"<p>Model {esc(run.config.get('model', '?'))}, layer {esc(run.config.get('layer', '?'))}. This page "
            f'quotes text from the training data: see <a href="#attribution">Attribution</a>.</p>'
            f"<nav>{nav}</nav>{sections}</body></html>")
