"""report.md: the sections of report.html as markdown tables and text.

Text from data goes through `md`: & < > become entities (so `<script>` shows as text in any renderer that
allows raw HTML), markdown syntax characters get a backslash, newlines show as ⏎ and never break a table.
"""
from __future__ import annotations

import re

import pandas as pd

from kit.collect.samples import select
from kit.report.data import (EVAL_CAPTION, SPECIALIZATION_CAPTIONS, RunData, dict_frame, example_row, fmt, lens_frame,
                             report_title,
                             metrics_frame, nulls_frame, specialized_frame, summary_frame, top_frame,
                             top_samples_caption)
from kit.report.holds_up import holds_up_parts
from kit.view.widgets import VISIBLE

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md(value) -> str:
    """Text from data, safe in markdown."""
    text = "".join(VISIBLE.get(c, c) for c in str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_table(df: pd.DataFrame, max_rows: int = 30, raw: tuple[str, ...] = ()) -> str:
    """A GitHub-flavoured table of the first `max_rows` rows; columns in `raw` already hold markdown."""
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    head = "| " + " | ".join(md(c) for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    cell = [(lambda v: str(v).replace("|", "\\|")) if c in raw else (lambda v: md(fmt(v))) for c in cols]
    body = "".join("| " + " | ".join(f(v) for f, v in zip(cell, row)) + " |\n"
                   for row in df.head(max_rows).itertuples(index=False))
    return head + body


def md_sample(row) -> str:
    """One sample's window as text, the collected token in bold between ⟦ ⟧."""
    hit = int(row["token_index"])
    return "".join(f"**⟦{md(t)}⟧**" if i == hit else md(t) for i, t in enumerate(row["context_tokens"]))


def markdown_report(run: RunData, interp=None) -> str:
    """The whole report.md; `interp`: the run's Interpretation, or None."""
    names = interp.labels if interp else {}
    out = [f"# Transcoder report: {md(report_title(run))}\n\n",
           "## Training\n\n", md_table(metrics_frame(run), 100)]
    if not run.history.empty:
        every = max(1, len(run.history) // 12)
        out += [f"\nLearning-rate schedule and training curves (one logged row in {every}):\n\n",
                md_table(run.history.iloc[::every], 40)]
    out += ["\n## Summary\n\n", md_table(summary_frame(run))]
    top = top_frame(run, names)
    top["example"] = [md_sample(r) if (r := example_row(run, i)) else "" for i in top["latent"]]
    out += ["\n## Top latents by maximum activation\n\n", md_table(top, len(top), raw=("example",))]
    out += _specialization(interp) + _holds_up(interp) + _patterns(interp, run.shown) if interp else []
    out += ["\n## Latent cards\n", f"\nDomains: {md(top_samples_caption(run))}"]
    if run.eval_profile is not None:
        out.append(f" Held-out: {md(EVAL_CAPTION)}")
    out += ["\n"] + [_card(run, i, names.get(i), interp) for i in run.shown]
    out += ["\n## Attribution\n\n", "  \n".join(md(line) for line in run.attribution.splitlines()) + "\n"]
    return "".join(out)


def _specialization(interp) -> list[str]:
    return ["\n## Domain specialization\n", "\nAgainst the nulls:\n\n", md_table(nulls_frame(interp), 60),
            f"\nMost specialized latents. {md(SPECIALIZATION_CAPTIONS[interp.config.level])}\n\n",
            md_table(specialized_frame(interp)), "\nBase rates:\n\n", md_table(interp.base_rates),
            f"\nHierarchy: {md(interp.hierarchy_sentence)}\n\n", md_table(dict_frame(interp.hierarchy))] + \
        ([f"\n> {md(interp.caveat)}\n"] if interp.caveat else [])


def _holds_up(interp) -> list[str]:
    out = ["\n## Does it hold up?\n"]
    for title, text, table in holds_up_parts(interp):
        out += [f"\n### {md(title)}\n\n", f"{md(text)}\n\n" if table is not None else f"> {md(text)}\n"]
        out += [md_table(table)] if table is not None else []
    return out


def _patterns(interp, shown: list) -> list[str]:
    tables = (("Top words over all latents", interp.top_words_overall), ("Lengths", interp.length_stats),
              ("Logit lens of the strongest latents", lens_frame(interp, shown)))
    out = [part for title, table in tables if len(table) for part in (f"\n### {title}\n\n", md_table(table))]
    return ["\n## Text patterns\n"] + out + [f"\n> {md(interp.logit_lens_caveat)}\n"] if out else []


def _card(run: RunData, latent: int, label, interp) -> str:
    rows = run.rows[run.rows["latent"] == latent]
    stats = run.latents.set_index("latent").loc[latent]
    kept = f" · top-k retention {stats['topk_retention']:.0%}" if pd.notna(stats.get("topk_retention")) else ""
    out = [f"\n### Latent {latent}" + (f" — {md(label)}" if label else "") + "\n\n",
           f"max {stats['max_activation']:.3g} · mean {stats['mean_activation']:.3g} · "
           f"{int(stats['n_samples'])} top samples ({run.phase or 'all'} pass){kept}\n\n"]
    for r in select(rows, run.phase, "top").sort_values("rank").head(5).to_dict("records"):
        out.append(f"- {r['activation']:.3g} ({md(r['domain'])}): {md_sample(r)}\n")
    intervals = select(rows, run.phase, "interval").sort_values(["interval", "rank"], ascending=[False, True])
    for r in intervals.drop_duplicates("interval").to_dict("records"):
        out.append(f"- bin {r['interval']}, {r['activation']:.3g} ({md(r['domain'])}): {md_sample(r)}\n")
    if run.phase != "heldout":
        for r in select(rows, "heldout", "top").sort_values("rank").head(2).to_dict("records"):
            out.append(f"- held-out, {r['activation']:.3g} ({md(r['domain'])}): {md_sample(r)}\n")
    out.append("\nDomains of its top samples: " + _shares(run.profile, latent) + "\n")
    if run.eval_profile is not None:
        out.append("\nDomains of the held-out documents it fires in: " + _shares(run.eval_profile, latent) + "\n")
    lens = interp.lens_of(latent) if interp else None
    if lens:
        out.append(f"\nLogit lens: promoted {md(fmt(lens['promoted']))}; suppressed {md(fmt(lens['suppressed']))}\n")
    return "".join(out)


def _shares(profile: pd.DataFrame, latent: int) -> str:
    prof = profile[(profile["latent"] == latent) & (profile["share"] > 0)].sort_values("share", ascending=False)
    return ", ".join(f"{md(d)} {s:.1%}" for d, s in zip(prof["domain"], prof["share"])) or "none"
