"""A training figure that redraws in place while a notebook trains and is an ordinary plotly figure afterwards.

`LiveFigure` shows the figure once with an `IPython.display` handle and replaces that output on every `update()`:
Jupyter redraws it where it is, and the saved notebook keeps only the last version (a normal plotly output), so a
static export shows the final curves. It reads the run folder's `history.csv`, which the trainer appends a row to
every `log_every` steps, so the training loop itself needs no callback.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PANELS = (("loss", "loss"), ("fvu", "FVU (unexplained variance)"), ("l0", "L0 (active latents per token)"),
          ("dead_frac", "dead fraction"))
COLOUR = "#ea580c"


def read_history(path) -> pd.DataFrame:
    """The rows of a `history.csv` (an empty frame before the first one is written)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["step", *(name for name, _ in PANELS)])
    return pd.read_csv(path)


def status_line(history: pd.DataFrame, total_steps: int) -> str:
    """One line on the latest history row: step, loss, FVU, L0, dead fraction and speed."""
    if history.empty:
        return f"step 0/{total_steps:,}: no history row yet"
    row = history.iloc[-1]
    speed = f", {row['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in row else ""
    return (f"step {int(row['step']):,}/{total_steps:,}: loss {row['loss']:.4g}, FVU {row['fvu']:.3f}, "
            f"L0 {row['l0']:.1f}, dead {row['dead_frac']:.1%}{speed}")


def history_figure(history: pd.DataFrame, total_steps: int, title: str = "Training") -> go.Figure:
    """Loss, FVU, L0 and dead fraction against step, in a 2 × 2 grid whose x axes span the whole run."""
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, subplot_titles=[label for _, label in PANELS],
                        vertical_spacing=0.12, horizontal_spacing=0.08)
    for i, (name, label) in enumerate(PANELS):
        rows = history[["step", name]].dropna() if name in history.columns else history.iloc[:0]
        fig.add_trace(go.Scatter(x=rows["step"].tolist(), y=rows[name].tolist(), name=label, mode="lines+markers",
                                 marker_size=4, line_color=COLOUR, showlegend=False), row=i // 2 + 1, col=i % 2 + 1)
    fig.update_xaxes(range=[0, total_steps])
    fig.update_xaxes(title_text="step", row=2)
    if len(history) and (history["loss"] > 0).all():
        fig.update_yaxes(type="log", row=1, col=1)  # the loss falls by orders of magnitude at the start
    fig.update_yaxes(tickformat=".0%", row=2, col=2)
    fig.update_layout(template="plotly_white", height=520, margin=dict(l=50, r=20, t=70, b=40),
                      title=f"{title} · {status_line(history, total_steps)}")
    return fig


def update_every(train, updates: int = 20) -> int:
    """Steps between figure updates for a `TrainConfig`: about `updates` per run, a whole number of log intervals
    (so each update adds a history row), and at most one checkpoint interval. Each `fit(stop_at=...)` call ends
    with a checkpoint, so shorter chunks cost one extra checkpoint each."""
    logs = max(1, math.ceil(train.steps / updates / train.log_every))
    return max(1, min(logs * train.log_every, train.checkpoint_every))


class LiveFigure:
    """`history_figure` of a run's `history.csv`, shown once and redrawn in place by `update()`.

    Outside IPython `show()` and `update()` only rebuild `figure`, so scripts and tests can use it too.
    """

    def __init__(self, history_csv, total_steps: int, title: str = "Training"):
        self.path, self.total_steps, self.title = Path(history_csv), int(total_steps), title
        self.history = read_history(self.path)
        self.figure = history_figure(self.history, self.total_steps, title)
        self.handle = None

    @property
    def status(self) -> str:
        """`status_line` of the history shown."""
        return status_line(self.history, self.total_steps)

    def bundle(self) -> dict:
        """The figure's mime bundle for the current plotly renderer, with the status line as its plain text."""
        # go.Figure's own _ipython_display_ ignores display ids, so the bundle is displayed raw instead
        return {**self.figure._repr_mimebundle_(), "text/plain": f"{self.title}: {self.status}"}

    def show(self) -> "LiveFigure":
        """Display the figure in the running notebook (no-op outside IPython); returns self."""
        from IPython import get_ipython
        if get_ipython() is not None:
            from IPython.display import display
            self.handle = display(self.bundle(), raw=True, display_id=True)
        return self

    def update(self) -> go.Figure:
        """Re-read `history.csv`, rebuild the figure and replace the shown output with it."""
        self.history = read_history(self.path)
        self.figure = history_figure(self.history, self.total_steps, self.title)
        if self.handle is not None:
            self.handle.update(self.bundle(), raw=True)
        return self.figure
