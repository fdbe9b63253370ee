"""Explorer: pick a latent and a phase, sort, filter by domain and page through its highlighted samples in
ipywidgets.

The card is the same pure HTML as `kit.view.widgets.sample_card`; `render()` returns it with a line naming the
current choices. Displayed, an Explorer shows two outputs: the widget, then that HTML as a static copy kept up
to date through a display handle. nbconvert's HTML export draws a widget only from saved widget state and a
CDN-hosted manager, so offline the widget is blank and the copy is what a reader sees; in a live JupyterLab or
Notebook the copy hides itself with CSS. Figures (`self.figures`) draw into an Output when a kernel runs.
"""
from __future__ import annotations

import ipywidgets as w
import pandas as pd
from IPython.display import HTML, display

from kit.collect.samples import PHASES, display_phase, latent_summary, select
from kit.interpret.interpretation import Interpretation
from kit.view.widgets import as_profile, domain_profile, esc, sample_card

SORTS = {"max": ("max_activation", False), "mean": ("mean_activation", False),
         "specialization": ("lift", False), "q_value": ("q", True), "top_share": ("top_share", False)}
"""Sort name -> (column of `latents`, ascending): max and mean of the phase's top samples, or a specialization
column at the level that classifies (`Interpretation.column`); 'specialization' sorts by lift, highest first."""
HIDE_WHEN_LIVE = (".jp-OutputArea-child:has(.widget-vbox)+.jp-OutputArea-child .kit-static,"
                  ".output_area:has(.widget-vbox)+.output_area .kit-static{display:none}")
"""CSS only: an output right after a rendered widget box hides its static copy; an export without the widget
state (or offline) renders no widget box, so the copy shows."""


class Explorer:
    """Controls (latent, sort, domain, phase, number of samples) over one run's samples; see `explorer`."""

    def __init__(self, samples: pd.DataFrame, interpretation: Interpretation | None = None, *,
                 latents: pd.DataFrame | None = None, profile=None, logit_lens: pd.DataFrame | None = None,
                 phase: str | None = None, n_heatmap: int = 20):
        if interpretation is not None:  # each table given explicitly wins over the interpretation's
            latents = interpretation.specialization if latents is None else latents
            profile = interpretation.profile if profile is None else profile
            logit_lens = interpretation.lens_lists() if logit_lens is None else logit_lens
        self.level = interpretation.config.level if interpretation is not None else "document"
        self.samples, self.extra, self.given_profile = samples, latents, profile
        self.groups = dict(tuple(samples.groupby("latent")))
        self.lens = None if logit_lens is None else logit_lens.set_index("latent").rename_axis(None)
        self.n_heatmap = n_heatmap
        phases = [p for p in PHASES if p in set(samples["phase"])] if "phase" in samples.columns else [None]
        self.phase_control = w.Dropdown(options=phases, value=phase or display_phase(samples), description="phase")
        self._tables()
        domains = sorted(str(d) for d in samples["domain"].unique())
        k = int(select(samples).groupby(["latent", "phase"]).size().max())
        self.sort = w.Dropdown(options=[s for s in SORTS if self._column(s) in self.latents.columns], value="max",
                               description="sort by")
        self.domain = w.Dropdown(options=["all"] + domains, value="all", description="domain")
        self.latent = w.Dropdown(description="latent", layout=w.Layout(width="320px"))
        self.n = w.IntSlider(value=min(5, k), min=1, max=max(k, 1), description="samples")
        self.card, self.plots, self.figures, self._quiet, self._handle = w.HTML(), w.Output(), {}, False, None
        self.widget = w.VBox([w.HBox([self.latent, self.sort]), w.HBox([self.domain, self.phase_control]),
                              self.n, self.card, self.plots])
        self._refresh_options()
        self.phase_control.observe(lambda _: self._tables() or self._refresh_options(), "value")
        for control in (self.sort, self.domain):
            control.observe(lambda _: self._refresh_options(), "value")
        for control in (self.latent, self.n):
            control.observe(lambda _: self._quiet or self._update(), "value")

    @property
    def phase(self) -> str | None:
        """The phase whose samples are shown and ranked."""
        return self.phase_control.value

    def _tables(self) -> None:
        """Per-latent table and profile of the current phase (max and mean of its top samples in that phase)."""
        table = latent_summary(self.samples, self.phase).reset_index()
        if self.extra is not None:
            extra = self.extra.drop(columns=[c for c in table.columns if c != "latent"], errors="ignore")
            table = table.merge(extra, on="latent", how="left")
        self.latents = table[table["latent"].isin(self.groups)].set_index("latent", drop=False).rename_axis(None)
        given = self.given_profile
        self.profile = domain_profile(self.samples, self.phase) if given is None else as_profile(given)

    def _column(self, sort: str) -> str:
        column = SORTS[sort][0]
        return column if column.endswith("activation") else f"{self.level}_{column}"

    def order(self) -> list[int]:
        """Latents offered under the current sort and domain filter, best first."""
        table = self.latents
        if self.domain.value != "all":
            prof = self.profile  # a held-out profile lists every domain, those it never fires in with share 0
            keep = prof.loc[(prof["domain"].astype(str) == self.domain.value) & (prof["share"] > 0), "latent"]
            table = table[table["latent"].isin(set(keep))]
        col, ascending = self._column(self.sort.value), SORTS[self.sort.value][1]
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
        from kit.view.figures import activation_histogram, domain_heatmap, domain_profile_bar
        self.figures = {"histogram": activation_histogram(self.samples, latent, self.phase),
                        "profile": domain_profile_bar(self.profile, latent),
                        "heatmap": domain_heatmap(self.profile, self.order()[:self.n_heatmap])}
        self._draw()

    def _draw(self) -> None:
        from IPython import get_ipython
        if get_ipython() is None:  # no front end to draw into (tests, scripts)
            return
        from kit.view.figures import show
        self.plots.clear_output(wait=True)
        with self.plots:
            for fig in self.figures.values():
                show(fig)

    def render(self) -> str:
        """The current view as HTML: a line naming the choices, then the latent's card."""
        latent, domain = self.latent.value, self.domain.value
        state = (f"sorted by {esc(self.sort.value)} · domain {esc(domain)} · {esc(self.phase)} pass · "
                 f"{self.n.value} samples · {len(self.latent.options)} latents")
        if latent is None:
            body = f'<div>No latent has samples in domain {esc(domain)}.</div>'
        else:
            row = self.latents.loc[latent]
            label = row.get("label") if isinstance(row.get("label"), str) else None
            body = sample_card(self.groups[latent], label=label, profile=self.profile, n_top=self.n.value,
                               retention=_number(row.get("topk_retention")), phase=self.phase, domain=domain,
                               logit_lens=self._lens(latent))
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


def explorer(samples: pd.DataFrame, interpretation: Interpretation | None = None, **options) -> Explorer:
    """An Explorer over `samples` (samples.parquet rows) and the run's `kit.interpret.interpretation.Interpretation`
    (its specialization columns and labels to sort and name latents by, its held-out profile for the domain filter
    and the bars, its logit lens). Options: `latents` (a per-latent table with `latent`, e.g. latents.csv or
    specialization columns), `profile` (default: the shares of top samples), `logit_lens` (latent, promoted,
    suppressed lists), each replacing the interpretation's; `phase` (default: 'final'), `n_heatmap`."""
    return Explorer(samples, interpretation, **options)
