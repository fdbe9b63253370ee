"""Explorer: pick a latent, sort, filter by domain and page through its highlighted samples in ipywidgets.

The card is the same pure HTML as `kit.widgets.sample_card`; `render()` returns it with a line naming the
current choices. Displayed, an Explorer shows two outputs: the widget, then that HTML as a static copy kept up
to date through a display handle. nbconvert's HTML export draws a widget only from saved widget state and a
CDN-hosted manager, so offline the widget is blank and the copy is what a reader sees; in a live JupyterLab or
Notebook the copy hides itself with CSS. Figures (`self.figures`) draw into an Output when a kernel runs.
"""
from __future__ import annotations

import ipywidgets as w
import pandas as pd
from IPython.display import HTML, display

from kit.widgets import as_profile, display_phase, domain_profile, esc, sample_card

SORTS = {"max": ("max_activation", False), "mean": ("mean_activation", False),
         "specialization": ("top_lift", False), "q_value": ("q_value", True), "top_share": ("top_share", False)}
"""Sort name -> (column of `latents`, ascending). 'specialization' sorts by lift, highest first."""
HIDE_WHEN_LIVE = (".jp-OutputArea-child:has(.widget-vbox)+.jp-OutputArea-child .kit-static,"
                  ".output_area:has(.widget-vbox)+.output_area .kit-static{display:none}")
"""CSS only: an output right after a rendered widget box hides its static copy; an export without the widget
state (or offline) renders no widget box, so the copy shows."""


def latent_summary(samples: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """Per latent with samples: max_activation, mean_activation and n_samples of its top samples in `phase`."""
    phase = phase or display_phase(samples)
    top = samples if phase is None else samples[samples["phase"] == phase]
    top = top[top["kind"] == "top"].groupby("latent")["activation"]
    return pd.DataFrame({"max_activation": top.max(), "mean_activation": top.mean(),
                         "n_samples": top.size()}).reset_index()


class Explorer:
    """Controls (latent, sort, domain, number of samples) over one run's samples; see `explorer`."""

    def __init__(self, samples: pd.DataFrame, latents: pd.DataFrame | None = None, profile=None,
                 logit_lens: pd.DataFrame | None = None, phase: str | None = None, n_heatmap: int = 20):
        self.phase = phase or display_phase(samples)
        self.samples = samples
        self.groups = dict(tuple(samples.groupby("latent")))
        summary = latent_summary(samples, self.phase)
        if latents is None:
            latents = summary
        elif "max_activation" not in latents.columns:
            latents = summary.merge(latents, on="latent", how="left")
        self.latents = latents[latents["latent"].isin(self.groups)].set_index("latent", drop=False).rename_axis(None)
        self.profile = domain_profile(samples, self.phase) if profile is None else as_profile(profile)
        self.lens = None if logit_lens is None else logit_lens.set_index("latent").rename_axis(None)
        self.n_heatmap = n_heatmap
        sorts = [s for s, (col, _) in SORTS.items() if col in self.latents.columns]
        domains = sorted(str(d) for d in samples["domain"].unique())
        k = int(samples.loc[samples["kind"] == "top"].groupby(["latent", "phase"]).size().max())
        self.sort = w.Dropdown(options=sorts, value="max", description="sort by")
        self.domain = w.Dropdown(options=["all"] + domains, value="all", description="domain")
        self.latent = w.Dropdown(description="latent", layout=w.Layout(width="320px"))
        self.n = w.IntSlider(value=min(5, k), min=1, max=max(k, 1), description="samples")
        self.card, self.plots, self.figures, self._quiet, self._handle = w.HTML(), w.Output(), {}, False, None
        self.widget = w.VBox([w.HBox([self.latent, self.sort]), w.HBox([self.domain, self.n]),
                              self.card, self.plots])
        self._refresh_options()
        for control in (self.sort, self.domain):
            control.observe(lambda _: self._refresh_options(), "value")
        for control in (self.latent, self.n):
            control.observe(lambda _: self._quiet or self._update(), "value")

    def order(self) -> list[int]:
        """Latents offered under the current sort and domain filter, best first."""
        table = self.latents
        if self.domain.value != "all":
            keep = self.profile.loc[self.profile["domain"].astype(str) == self.domain.value, "latent"]
            table = table[table["latent"].isin(set(keep))]
        col, ascending = SORTS[self.sort.value]
        return table.sort_values([col, "latent"], ascending=[ascending, True], na_position="last")["latent"].tolist()

    def _refresh_options(self) -> None:
        order, current = self.order(), self.latent.value
        self._quiet = True  # one redraw for the whole change, not one per trait
        try:
            self.latent.options = [(self._option_label(i), i) for i in order]
            self.latent.value = current if current in order else (order[0] if order else None)
        finally:
            self._quiet = False
        self._update()

    def _option_label(self, latent: int) -> str:
        row = self.latents.loc[latent]
        label = f" {row['label']}" if "label" in row and isinstance(row["label"], str) else ""
        return f"{latent} (max {row['max_activation']:.3g}){label[:40]}"

    def _update(self) -> None:
        self.card.value = self.render()
        if self._handle is not None:  # keep the saved notebook's static view on the latest choice
            self._handle.update(HTML(self.static_html()))
        latent = self.latent.value
        if latent is None:
            return
        from kit.figures import activation_histogram, domain_heatmap, domain_profile_bar
        self.figures = {"histogram": activation_histogram(self.samples, latent, self.phase),
                        "profile": domain_profile_bar(self.profile, latent),
                        "heatmap": domain_heatmap(self.profile, self.order()[:self.n_heatmap])}
        self._draw()

    def _draw(self) -> None:
        from IPython import get_ipython
        if get_ipython() is None:  # no front end to draw into (tests, scripts)
            return
        from kit.figures import show
        self.plots.clear_output(wait=True)
        with self.plots:
            for fig in self.figures.values():
                show(fig)

    def render(self) -> str:
        """The current view as HTML: a line naming the choices, then the latent's card."""
        latent, domain = self.latent.value, self.domain.value
        state = (f"sorted by {esc(self.sort.value)} · domain {esc(domain)} · {self.n.value} samples · "
                 f"{len(self.latent.options)} latents")
        if latent is None:
            body = f'<div>No latent has samples in domain {esc(domain)}.</div>'
        else:
            row = self.latents.loc[latent]
            body = sample_card(self.groups[latent], label=row.get("label") if isinstance(row.get("label"), str)
                               else None, profile=self.profile, retention=_number(row.get("topk_retention")), n_top=self.n.value,
                               phase=self.phase, domain=domain, logit_lens=self._lens(latent))
        return f'<div class="kit-explorer"><div style="font-size:12px;color:#555">{state}</div>{body}</div>'

    def _lens(self, latent: int):
        return self.lens.loc[latent] if self.lens is not None and latent in self.lens.index else None

    def static_html(self) -> str:
        """`render()` in a div that hides itself right after a live widget (JupyterLab, Notebook 7 and 6)."""
        return f"<style>{HIDE_WHEN_LIVE}</style><div class=\"kit-static\">{self.render()}</div>"

    def _ipython_display_(self) -> None:
        display(self.widget)
        self._handle = display(HTML(self.static_html()), display_id=True)

    def _repr_html_(self) -> str:
        return self.static_html()


def _number(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def explorer(samples: pd.DataFrame, latents: pd.DataFrame | None = None, profile=None, **options) -> Explorer:
    """An Explorer over `samples` (samples.parquet rows). `latents`: per-latent table (latents.csv, optionally
    with analysis columns such as top_lift, q_value, label); `profile`: a domain profile (default: from the
    samples). Options: `logit_lens` (latent, promoted, suppressed), `phase`, `n_heatmap`."""
    return Explorer(samples, latents, profile, **options)
