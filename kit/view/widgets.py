"""Token highlights and latent cards: pure HTML with inline CSS, so they read the same in a live notebook, a
static export (nbconvert, GitHub) and `report.html`.

Every string that comes from data goes through `esc` (`html.escape(..., quote=True)`). Colours run from white to
orange with act / max_act; negative activations (ReLU and TopK latents never give them) run to blue. The
interactive explorer lives in `kit.view.latent_explorer`, the plotly figures in `kit.view.figures`.

`samples` frames follow docs/run-folder.md (`latent`, `phase`, `kind`, `rank`, `interval`, `activation`, `domain`,
`context_tokens`, `context_acts`, `token_index`, ...) and are read through `kit.collect.samples`. A *profile* is a
long frame with columns `latent`, `domain`, `share`, and what the shares count: `count` (top samples, from
`domain_profile`) or `documents` (held-out documents a latent fires in, `Interpretation.profile`); `as_profile`
also accepts wide frames. `profile_caption` says which, so no title calls one the other.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import pandas as pd

from kit.collect.samples import display_phase, latent_summary, select, topk_retention

VISIBLE = {"\n": "⏎", "\t": "⇥", "\r": ""}
"""Whitespace that would vanish or break the line is shown as a symbol; spaces stay. `break-spaces` (not
pre-wrap) lets a highlighted run of indentation wrap instead of hanging past the box's edge."""
BOX = ("font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;"
       "white-space:break-spaces;overflow-wrap:anywhere;line-height:1.8;padding:3px 6px;margin:2px 0;"
       "border:1px solid #e5e7eb;border-radius:4px;background:#fff;color:#111")
HIT = "outline:2px solid #9a3412;outline-offset:-1px;border-radius:2px;font-weight:600"
CARD = "border:1px solid #d1d5db;border-radius:6px;padding:8px 10px;margin:8px 0;background:#fafafa;color:#111"


def esc(value) -> str:
    """Text from data, safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Highlight:
    """One highlighted token sequence; displays itself in Jupyter."""

    html: str
    """The rendered HTML fragment."""

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def act_colour(act: float, max_act: float) -> str | None:
    """Background colour of a token (None when it did not fire): white → orange (#ff8c00) by act / max_act."""
    if not math.isfinite(act) or act == 0 or not max_act > 0:
        return None
    t = min(abs(act) / max_act, 1.0)
    rgb = (255, round(255 - 115 * t), round(255 - 255 * t)) if act > 0 else \
        (round(255 - 180 * t), round(255 - 120 * t), 255)
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def visible_token(token: str) -> str:
    """The token as displayed: newlines as ⏎, tabs as ⇥, an empty token as ∅ (not yet escaped)."""
    shown = "".join(VISIBLE.get(c, c) for c in str(token))
    return shown if shown else "∅"


def token_highlight(tokens: list[str], acts: list[float], max_act: float | None = None,
                    highlight_index: int | None = None) -> Highlight:
    """Tokens on a white→orange scale by act / max_act (default: the largest |act|), the value in each
    token's `title` tooltip, the token at `highlight_index` (the collected one) outlined."""
    tokens, acts = list(tokens), [float(a) for a in acts]
    if len(tokens) != len(acts):
        raise ValueError(f"token_highlight needs one activation per token, got {len(tokens)} tokens and "
                         f"{len(acts)} activations")
    scale = max_act if max_act is not None else max((abs(a) for a in acts if math.isfinite(a)), default=0.0)
    spans = []
    for i, (token, act) in enumerate(zip(tokens, acts)):
        hit = i == highlight_index
        colour = act_colour(act, scale)
        style = ";".join(s for s in (colour and f"background:{colour}", hit and HIT) if s)
        style = f' style="{style}"' if style else ""
        title = f"act {act:.4g}" + (" (collected token)" if hit else "")
        spans.append(f'<span class="kit-t{" kit-hit" if hit else ""}" title="{esc(title)}"{style}>'
                     f'{esc(visible_token(token))}</span>')
    return Highlight(f'<div class="kit-tokens" style="{BOX}">{"".join(spans)}</div>')


def domain_profile(samples: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """Per latent and domain: count and share of the latent's top samples (of `phase`, default the displayed one)
    from that domain."""
    top = select(samples, phase or display_phase(samples), "top")
    counts = top.groupby(["latent", "domain"]).size().rename("count").reset_index()
    counts["share"] = counts["count"] / counts.groupby("latent")["count"].transform("sum")
    return counts.sort_values(["latent", "share", "domain"], ascending=[True, False, True], ignore_index=True)


def as_profile(profile) -> pd.DataFrame:
    """A long (latent, domain, share) frame from a long frame (`share` or `count` column) or a wide one
    (index: latents, columns: domains, values: shares or counts)."""
    if {"latent", "domain"} <= set(profile.columns):
        long = profile.copy()
    else:
        long = profile.fillna(0.0).rename_axis(index="latent", columns="domain").stack().rename("count")
        long = long.reset_index()
    if "share" not in long.columns:
        long["share"] = long["count"] / long.groupby("latent")["count"].transform("sum")
    return long


def profile_caption(profile) -> str:
    """What a profile's shares are shares of, read from its columns: the held-out documents a latent fires in
    (`documents`), its top samples (`count`), or plain 'domain shares' when the profile does not say."""
    columns = set(profile.columns) if isinstance(profile, pd.DataFrame) else set()
    if {"latent", "domain", "documents"} <= columns:
        return "share of the held-out documents a latent fires in, per domain"
    if {"latent", "domain", "count"} <= columns:
        return "share of a latent's top samples, per domain"
    return "domain shares"


def profile_bars(shares: dict, title: str) -> str:
    """A small horizontal bar chart in HTML/CSS under `title`: one bar per domain, width = share."""
    rows = []
    for name, share in sorted(shares.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        width = max(0.0, min(float(share), 1.0)) * 100
        rows.append(f'<div style="display:flex;align-items:center;gap:6px;font-size:12px">'
                    f'<span style="width:9em;text-align:right;overflow:hidden">{esc(name)}</span>'
                    f'<span style="display:inline-block;height:10px;width:{0.6 * width:.1f}%;'
                    f'background:#fb923c"></span><span>{share:.0%}</span></div>')
    return f'<div class="kit-profile"><div style="font-size:12px;color:#555">{esc(title)}</div>{"".join(rows)}</div>'


def sample_line(row, max_act: float) -> str:
    """One sample: its activation, domain and highlighted window."""
    meta = f'<div style="font-size:11px;color:#555">act {float(row["activation"]):.3g} · {esc(row["domain"])}</div>'
    return meta + token_highlight(row["context_tokens"], row["context_acts"], max_act, int(row["token_index"])).html


def sample_card(rows: pd.DataFrame, *, label: str | None = None, profile=None, profile_title: str | None = None,
                logit_lens=None, retention: float | None = None, n_top: int = 5, per_interval: int = 1,
                n_heldout: int = 2, phase: str | None = None, domain: str | None = None) -> str:
    """One latent's card: header (id, label, max/mean activation and count of its top samples in `phase`, top-k
    retention), its top `n_top` samples highlighted, `per_interval` samples of each activation bin (highest bin
    first), its `n_heldout` strongest held-out samples, domain shares, logit lens.

    `rows`: that latent's samples. `phase` defaults to `display_phase(rows)`; `domain` keeps that domain's
    samples only. `profile`: domain -> share as a dict, a Series or a profile frame (default: the shares of its top
    samples in `phase`); `profile_title` names what they are shares of (default: `profile_caption`).
    `logit_lens`: a mapping with `promoted` and `suppressed` token lists. `retention` defaults to the share of
    the latent's training top contexts still in its final top contexts (`kit.collect.samples.topk_retention`).
    """
    if rows["latent"].nunique() != 1:
        raise ValueError(f"sample_card renders one latent, got latents {sorted(set(rows['latent']))[:8]}")
    latent, phase = int(rows["latent"].iloc[0]), phase or display_phase(rows)
    stats = latent_summary(rows, phase).reindex([latent]).iloc[0]
    retention = _retention(rows) if retention is None else retention
    shown = rows if domain in (None, "all") else rows[rows["domain"] == domain]
    scale = max((max(a, default=0.0) for a in select(shown, phase, None)["context_acts"]), default=0.0)
    parts = [_card_header(latent, label, stats, retention, phase)]
    top = select(shown, phase, "top").sort_values("rank", kind="stable").head(n_top)
    parts.append(_block("top activations" + (f" in {domain}" if domain not in (None, "all") else ""),
                        [sample_line(r, scale) for r in top.to_dict("records")]))
    inter = select(shown, phase, "interval")
    for b, group in sorted(inter.groupby("interval"), key=lambda kv: -kv[0]):
        picked = group.sort_values("rank", kind="stable").head(per_interval)
        parts.append(_block(f"interval bin {b}", [sample_line(r, scale) for r in picked.to_dict("records")]))
    held = select(shown, "heldout", "top").sort_values("rank", kind="stable").head(n_heldout)
    if phase != "heldout" and len(held):
        parts.append(_block("top activations on held-out documents",
                            [sample_line(r, scale) for r in held.to_dict("records")]))
    if profile is None:
        profile = domain_profile(rows, phase)
        profile_title = profile_title or f"share of its {stats['n_samples']:.0f} top samples ({phase} pass), per domain"
    shares = _shares(profile, latent)
    if shares:
        parts.append(profile_bars(shares, profile_title or profile_caption(profile)))
    if logit_lens is not None:
        parts.append(_lens(logit_lens))
    return f'<div class="kit-card" style="{CARD}">{"".join(parts)}</div>'


def _card_header(latent: int, label, stats: pd.Series, retention, phase) -> str:
    n = 0 if pd.isna(stats["n_samples"]) else int(stats["n_samples"])
    bits = [f"max {stats['max_activation']:.3g}", f"mean {stats['mean_activation']:.3g}", f"{n} top samples"]
    if phase:
        bits[-1] += f" ({esc(phase)} pass)"
    if retention is not None and math.isfinite(retention):
        bits.append(f'<span title="share of its training top-k contexts still in its final top-k">'
                    f'top-k retention {retention:.0%}</span>')
    name = f"Latent {latent}" + (f" — {esc(label)}" if label else "")
    return (f'<div style="font-weight:600;font-size:14px">{name}</div>'
            f'<div style="font-size:12px;color:#444">{" · ".join(bits)}</div>')


def _block(title: str, items: list[str]) -> str:
    body = "".join(items) or '<div style="font-size:12px;color:#777">no samples</div>'
    return f'<div style="margin-top:6px"><div style="font-size:12px;color:#555">{esc(title)}</div>{body}</div>'


def _retention(rows: pd.DataFrame) -> float | None:
    if not {"phase", "kind", "context_index", "latent"} <= set(rows.columns):
        return None
    train, final = select(rows, "training"), select(rows, "final")
    return topk_retention(train, final)[1] if len(train) and len(final) else None


def _shares(profile, latent: int) -> dict:
    if isinstance(profile, pd.DataFrame):
        long = as_profile(profile)
        long = long[long["latent"] == latent]
        return dict(zip(long["domain"], long["share"]))
    return dict(profile)


def _lens(lens) -> str:
    def chips(tokens):
        return " ".join(f'<code style="background:#eef2ff;padding:0 3px">{esc(visible_token(t))}</code>'
                        for t in tokens)
    return (f'<div style="margin-top:6px;font-size:12px"><div>logit lens, promoted: {chips(lens["promoted"])}</div>'
            f'<div>suppressed: {chips(lens["suppressed"])}</div></div>')
