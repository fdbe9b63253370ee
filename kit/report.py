"""The interpretability report of a run folder: `report.md` and a self-contained `report.html`.

`write_report(run_dir, analysis=None, patterns=None)` reads `config.json`, `history.csv`, `metrics.json`,
`samples.parquet` and `latents.csv` (docs/run-folder.md). Optional results it accepts, every key optional:

- `analysis`: dict with `latents` (DataFrame: latent plus any of class, top_domain, top_share, top_lift, q_value,
  label), `summary` (dict: name -> number, or name -> dict of numbers, e.g. trained/shuffled/random nulls),
  `hierarchy` (dict or str), `caveat` (str), `profile` (latent, domain, share: the share of the held-out documents
  a latent fires in that come from each domain, summing to 1 per latent, as `kit.analysis.profile_table`).
- `patterns`: dict with `top_words` (DataFrame with a latent column), `length_stats` (dict), `logit_lens`
  (DataFrame: latent, promoted list[str], suppressed list[str]), `labels` (dict latent -> label, or a
  DataFrame latent, label; these win over analysis labels).

The HTML has no scripts and loads nothing: inline CSS, SVG line charts, CSS bars. Dataset text appears only with
the parquet's `attribution` notice. Cards cover the `n_cards` latents with the highest max activation. Every domain
share the report shows sums to 1 per latent, under a caption that says what it is a share of (`TOP_SAMPLES_CAPTION`,
`EVAL_CAPTION`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kit.explorer import latent_summary
from kit.widgets import as_profile, display_phase, domain_profile

LIGHT = ["latent", "phase", "kind", "rank", "interval", "activation", "domain", "context_index", "source"]
TOP_SAMPLES_CAPTION = ("Share of each latent's top samples ({phase}) that come from each domain; a row sums to 100%. "
                       "Top samples are its strongest activations, not a firing rate.")
EVAL_CAPTION = ("Share of the held-out documents each latent fires in that come from each domain; a row sums to "
                "100% (a latent that fires in none has no row). A big domain holds a big share by chance: the lift "
                "column of the specialization table divides by each domain's base rate.")
SPECIALIZATION_CAPTION = ("Units are held-out documents. top_share: share of the documents a latent fires in that "
                          "come from its top domain; top_lift: that share over the share expected from the domain's "
                          "documents and their lengths; q_value: Benjamini-Hochberg q of the document-level G-test.")


@dataclass(frozen=True)
class RunData:
    """What the report shows, read once from a run folder."""

    folder: Path
    """The run folder."""
    config: dict
    """config.json."""
    history: pd.DataFrame
    """history.csv (empty when missing)."""
    metrics: dict
    """metrics.json, nested dicts flattened to dotted keys."""
    latents: pd.DataFrame
    """latents.csv (or the same table computed from the samples), latents with samples only."""
    light: pd.DataFrame
    """Every sample row without its token window (cheap on large runs)."""
    rows: pd.DataFrame
    """Full rows (windows included) of the latents the report shows."""
    profile: pd.DataFrame
    """Top-sample profile of the displayed phase: latent, domain, count and share of its top samples."""
    eval_profile: pd.DataFrame | None
    """Held-out profile (`analysis["profile"]`): latent, domain, share of the documents it fires in; or None."""
    shown: list
    """Latents that get a card, strongest first."""
    attribution: str
    """The text-source notice."""
    phase: str | None
    """The phase whose samples the report shows ('final' when present, see `kit.widgets.display_phase`)."""


def load_run(run_dir, n_cards: int = 24, n_table: int = 50, eval_profile=None) -> RunData:
    """Read a run folder; full sample rows only for the `n_table` strongest latents. `eval_profile`: the held-out
    profile of an analysis (see the module docstring), whose shares must sum to 1 per latent."""
    folder = Path(run_dir)
    path = folder / "samples.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a report needs the samples that training writes")
    light = pq.read_table(path, columns=[c for c in LIGHT if c in pq.read_schema(path).names]).to_pandas()
    latents = _read_csv(folder / "latents.csv")
    latents = latent_summary(light) if latents.empty else latents[latents["n_samples"] > 0]
    order = latents.sort_values(["max_activation", "latent"], ascending=[False, True])["latent"].tolist()
    rows = pq.read_table(path, filters=[("latent", "in", order[:n_table])]).to_pandas() if order else light
    return RunData(folder, _read_json(folder / "config.json"), _read_csv(folder / "history.csv"),
                   _flatten(_read_json(folder / "metrics.json")), latents.reset_index(drop=True), light, rows,
                   domain_profile(light), _checked(eval_profile), order[:n_cards], _attribution(path, light),
                   display_phase(light))


def _checked(profile) -> pd.DataFrame | None:
    """The profile as a long frame, refused when its shares do not sum to 1 per latent (a rate is no share)."""
    if profile is None:
        return None
    long = as_profile(profile)
    sums = long.groupby("latent")["share"].sum()
    if len(sums) and not np.allclose(sums, 1.0, atol=1e-6):
        bad = sums[~np.isclose(sums, 1.0, atol=1e-6)]
        raise ValueError(f"profile shares must sum to 1 per latent; latents {bad.index[:5].tolist()} sum to "
                         f"{bad.to_numpy()[:5].round(4).tolist()}")
    return long


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _attribution(path: Path, light: pd.DataFrame) -> str:
    """The parquet's `attribution` notice, else one built from the `source` column."""
    meta = pq.read_schema(path).metadata or {}
    if b"attribution" in meta:
        return meta[b"attribution"].decode()
    sources = sorted(light["source"].unique()) if "source" in light.columns else []
    try:
        from kit.corpus import attribution_notice
        return attribution_notice(sources)
    except ValueError:
        return "Text from: " + (", ".join(sources) or "unknown sources") + ". Check each source's licence."


def write_report(run_dir, analysis: dict | None = None, patterns: dict | None = None,
                 n_cards: int = 24) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into the run folder; returns their paths."""
    from kit.report_html import html_report
    from kit.report_md import markdown_report
    analysis, patterns = analysis or {}, patterns or {}
    run = load_run(run_dir, n_cards=n_cards, eval_profile=analysis.get("profile"))
    md_path, html_path = run.folder / "report.md", run.folder / "report.html"
    md_path.write_text(markdown_report(run, analysis, patterns), encoding="utf-8")
    html_path.write_text(html_report(run, analysis, patterns), encoding="utf-8")
    return md_path, html_path


def top_samples_caption(run: RunData) -> str:
    """`TOP_SAMPLES_CAPTION` for the run's displayed phase."""
    return TOP_SAMPLES_CAPTION.format(phase=f"{run.phase} pass" if run.phase else "all passes")


def fmt(value) -> str:
    """Numbers to three significant digits, lists joined, everything else as str (not escaped)."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()  # numpy scalars and arrays
    if isinstance(value, float):
        return f"{value:,.0f}" if 1e3 <= abs(value) < 1e15 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):  # token lists: quoted, so leading spaces and newlines stay visible
        return ", ".join(repr(v) if isinstance(v, str) else fmt(v) for v in value)
    return str(value)


def labels(analysis: dict, patterns: dict) -> dict:
    """latent -> label, from analysis["latents"].label or patterns["labels"] (dict or frame latent, label)."""
    found = {}
    table = analysis.get("latents")
    if table is not None and "label" in table.columns:
        found |= dict(zip(table["latent"], table["label"]))
    extra = patterns.get("labels")
    if isinstance(extra, pd.DataFrame):
        extra = dict(zip(extra["latent"], extra["label"]))
    found |= dict(extra or {})
    return {int(k): str(v) for k, v in found.items() if isinstance(v, str) and v}


def metrics_frame(run: RunData) -> pd.DataFrame:
    return pd.DataFrame({"metric": list(run.metrics), "value": list(run.metrics.values())})


def summary_frame(run: RunData) -> pd.DataFrame:
    """Latents with samples, total top samples and the average per latent (in-training top-k, as latents.csv)."""
    n_with, total = len(run.latents), int(run.latents["n_samples"].sum())
    d_latent = run.config.get("latents", {}).get("d_latent")
    values = {"latents": d_latent, "latents with samples": n_with, "total top samples": total,
              "average samples per latent with samples": total / n_with if n_with else float("nan"),
              "interval samples": int((run.light["kind"] == "interval").sum()) if "kind" in run.light else 0,
              "top-k retention (all latents)": run.metrics.get("topk_retention")}
    return pd.DataFrame({"quantity": list(values), "value": list(values.values())}).dropna()


def top_frame(run: RunData, names: dict, n: int = 50) -> pd.DataFrame:
    """The `n` latents with the highest max activation: max, mean, sample count, top-k retention, label."""
    cols = [c for c in ("latent", "max_activation", "mean_activation", "n_samples", "topk_retention") if c in run.latents]
    table = run.latents.sort_values(["max_activation", "latent"], ascending=[False, True]).head(n)[cols]
    if names:
        table = table.assign(label=[names.get(int(i), "") for i in table["latent"]])
    return table.reset_index(drop=True)


def specialized_frame(analysis: dict, n: int = 30) -> pd.DataFrame:
    """analysis["latents"], most specialized first (lowest q_value, else highest top_lift)."""
    table = analysis.get("latents")
    if table is None or table.empty:
        return pd.DataFrame()
    key = next((c for c in ("q_value", "top_lift", "top_share") if c in table.columns), "latent")
    return table.sort_values([key, "latent"], ascending=[key in ("q_value", "latent"), True]).head(n)


def dict_frame(d: dict) -> pd.DataFrame:
    """A dict of numbers as (name, value) rows; a dict of dicts as one column per outer key."""
    if d and all(isinstance(v, dict) for v in d.values()):
        return pd.DataFrame(d).rename_axis("measure").reset_index()
    return pd.DataFrame({"name": list(d), "value": [fmt(v) for v in d.values()]})


def example_row(run: RunData, latent: int):
    """The latent's strongest top sample in the displayed phase, as a dict (None if it has none)."""
    rows = run.rows[(run.rows["latent"] == latent) & (run.rows["kind"] == "top")]
    rows = rows[rows["phase"] == run.phase] if run.phase else rows
    return rows.sort_values("rank").iloc[0].to_dict() if len(rows) else None


