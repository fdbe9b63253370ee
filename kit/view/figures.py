"""Plotly figures of latents (activation histogram, domain profile, latent × domain heatmap) and how to show them
with no network. Plotly draws tags such as <b> in labels as markup, so labels from data are HTML-escaped.

Why a renderer of our own. Plotly's "notebook_connected", "colab" and "cdn" renderers load plotly.js from a CDN;
its "notebook" renderer embeds plotly.js inline once but every figure still loads MathJax from a CDN, and it
embeds the library on first use, which can be inside an ipywidgets Output that a static export drops.
`setup_plotly()` puts plotly.js (~4.7 MB, once) inline in the output of the cell that calls it and sets the
default renderer to "plotly_mimetype+kit_inline": JupyterLab and VS Code draw the `application/vnd.plotly.v1+json`
part natively, and nbconvert's HTML export (which ignores that mimetype) shows the `text/html` part, a div plus
`Plotly.newPlot` against the inline library, so the exported page draws its figures offline. Colab runs every
output in its own iframe (an earlier cell's library is not visible) and has network: it gets "colab".
"""
from __future__ import annotations

import sys

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

from kit.collect.samples import display_phase, select
from kit.view.widgets import as_profile, esc, profile_caption

ORANGE, GREY = "#ea580c", "#9ca3af"
LAYOUT = dict(template="plotly_white", height=320, margin=dict(l=50, r=20, t=40, b=40))


def activation_histogram(samples: pd.DataFrame, latent: int, phase: str | None = None) -> go.Figure:
    """Histogram of the `activation` of one latent's samples in `phase`, top and interval samples overlaid."""
    rows = samples[samples["latent"] == latent]
    phase = phase or display_phase(rows)
    rows = select(rows, phase, None)
    fig = go.Figure(layout=dict(LAYOUT, title=f"Latent {latent}: activations of its samples"
                                + (f" ({phase} pass)" if phase else ""), barmode="overlay",
                                xaxis_title="activation", yaxis_title="samples"))
    top = float(rows["activation"].max()) if len(rows) else 1.0
    bins = dict(start=0.0, end=top * 1.0001, size=top / 30 or 1.0)  # shared bins, so bar widths compare
    kinds = (("top", ORANGE), ("interval", GREY)) if "kind" in rows.columns else ((None, ORANGE),)
    for kind, colour in kinds:
        acts = select(rows, None, kind)["activation"]
        if len(acts):
            fig.add_trace(go.Histogram(x=acts.to_numpy(), name=kind or "samples", marker_color=colour, opacity=0.75,
                                       xbins=bins))
    return fig


def domain_profile_bar(profile: pd.DataFrame, latent: int, title: str | None = None) -> go.Figure:
    """Bar chart of one latent's domain shares (a profile frame, see `kit.view.widgets`), titled with what they
    are shares of (`profile_caption`) unless `title` says."""
    long = as_profile(profile)
    long = long[long["latent"] == latent].sort_values(["share", "domain"], ascending=[False, True])
    title = title or f"Latent {latent}: {profile_caption(profile)}"
    return go.Figure(go.Bar(x=[esc(d) for d in long["domain"]], y=long["share"].to_numpy(), marker_color=ORANGE),
                     layout=dict(LAYOUT, title=esc(title), yaxis_title="share", yaxis_tickformat=".0%"))


def domain_heatmap(profile: pd.DataFrame, latents, title: str | None = None) -> go.Figure:
    """Latent × domain heatmap of shares for `latents` (in the given order, top to bottom), titled with what they
    are shares of (`profile_caption`) unless `title` says."""
    latents = [int(x) for x in latents]
    long = as_profile(profile)
    wide = long[long["latent"].isin(latents)].pivot_table(index="latent", columns="domain", values="share",
                                                          fill_value=0.0)
    wide = wide.reindex(index=latents, fill_value=0.0)
    title = title or profile_caption(profile).capitalize()
    return go.Figure(go.Heatmap(z=wide.to_numpy(), x=[esc(c) for c in wide.columns],
                                y=[f"latent {i}" for i in wide.index], colorscale="Oranges", zmin=0, zmax=1,
                                colorbar=dict(title="share")),
                     layout=dict(LAYOUT, title=esc(title), height=max(320, 60 + 18 * len(latents)),
                                 yaxis_autorange="reversed"))


class InlineRenderer(MimetypeRenderer):
    """`text/html` of a figure that draws with an already-loaded plotly.js: no library, no MathJax, no CDN."""

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                           default_width="100%", default_height=LAYOUT["height"], validate=False)
        return {"text/html": html}


def library_html() -> str:
    """plotly.js inline in a script tag, as `setup_plotly` displays it."""
    from plotly.offline import get_plotlyjs
    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def setup_plotly() -> str:
    """Make figures show in this notebook and in its static HTML export, offline; returns the renderer name."""
    if "google.colab" in sys.modules:
        pio.renderers.default = "colab"
        return "colab"
    pio.renderers["kit_inline"] = InlineRenderer()
    pio.renderers.default = "plotly_mimetype+kit_inline"
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return pio.renderers.default
    if get_ipython() is not None:
        display(HTML(library_html()))
    return pio.renderers.default


def show(fig: go.Figure) -> None:
    """Show a figure with the renderer `setup_plotly` chose (call `setup_plotly()` once per notebook first)."""
    if "kit_inline" not in pio.renderers and "google.colab" not in sys.modules:
        setup_plotly()
    fig.show()
