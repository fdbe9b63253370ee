"""The interpretability report of a run folder: `report.md` and a self-contained `report.html`.

`write_report(run_dir, interpretation=None)` reads `config.json`, `history.csv`, `metrics.json`, `samples.parquet`
and `latents.csv` (docs/run-folder.md); the run's `kit.interpret.interpretation.Interpretation`, when given, adds
the specialization against the nulls, the held-out domain profile, text patterns, the logit lens and labels, under
its own column names.

The HTML has no scripts and loads nothing: inline CSS, SVG line charts, CSS bars. Dataset text appears only with
the parquet's `attribution` notice. Cards cover the `n_cards` strongest latents (`kit.collect.samples.strongest`
in the displayed phase, 'final' when present). Every domain share the report shows sums to 1 per latent, under a
caption that says what it is a share of (`TOP_SAMPLES_CAPTION`, `EVAL_CAPTION`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kit.collect.samples import display_phase, latent_summary, select, strongest
from kit.view.widgets import as_profile, domain_profile

LIGHT = ["latent", "phase", "kind", "rank", "interval", "activation", "domain", "context_index", "source"]
TOP_SAMPLES_CAPTION = ("Share of each latent's top samples ({phase}) that come from each domain; a row sums to 100%. "
                       "Top samples are its strongest activations, not a firing rate.")
EVAL_CAPTION = ("Share of the held-out documents each latent fires in that come from each domain; a row sums to "
                "100% (a latent that fires in none has no row). A big domain holds a big share by chance: the lift "
                "columns of the specialization table divide by each domain's base rate.")
SPECIALIZATION_CAPTIONS = {
    "document": "Units are held-out documents. document_top_share: share of the documents a latent fires in that come "
                "from its top domain; document_lift: that share over the share expected from the domain's documents "
                "and their lengths; document_q: Benjamini-Hochberg q of the document-level G-test.",
    "token": "Units are firing tokens of held-out documents. token_top_share: share of a latent's firing tokens that "
             "come from its top domain; token_lift: that share over the domain's share of scored tokens; token_q: "
             "Benjamini-Hochberg q of the token-level G-test (a latent's firing tokens are not independent, so this "
             "q overstates significance: read it as a ranking)."}
"""The caption of the specialization table, by the level that classifies (`SpecializationConfig.level`)."""


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
    """`latent_summary` of the displayed phase (latent, max_activation, mean_activation, n_samples), with the
    topk_retention of latents.csv when it has one; latents with top samples only."""
    light: pd.DataFrame
    """Every sample row without its token window (cheap on large runs)."""
    rows: pd.DataFrame
    """Full rows (windows included) of the latents the report shows."""
    profile: pd.DataFrame
    """Top-sample profile of the displayed phase: latent, domain, count and share of its top samples."""
    eval_profile: pd.DataFrame | None
    """Held-out profile (`Interpretation.profile`): latent, domain, share of the documents it fires in; or None."""
    shown: list
    """Latents that get a card, strongest first."""
    attribution: str
    """The text-source notice."""
    phase: str | None
    """The phase whose samples the report shows and ranks ('final' when present, `display_phase`)."""


def load_run(run_dir, n_cards: int = 24, n_table: int = 50, eval_profile=None) -> RunData:
    """Read a run folder; full sample rows only for the `n_table` strongest latents. `eval_profile`: a held-out
    profile (`Interpretation.profile`), whose shares must sum to 1 per latent."""
    folder = Path(run_dir)
    path = folder / "samples.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a report needs the samples that training writes")
    light = pq.read_table(path, columns=[c for c in LIGHT if c in pq.read_schema(path).names]).to_pandas()
    phase = display_phase(light)
    latents = latent_summary(light, phase).reset_index()
    saved = _read_csv(folder / "latents.csv")
    if "topk_retention" in saved.columns:  # measured between phases, so it comes from the run, not this summary
        latents = latents.merge(saved[["latent", "topk_retention"]], on="latent", how="left")
    order = strongest(latents)
    rows = pq.read_table(path, filters=[("latent", "in", order[:n_table])]).to_pandas() if order else light
    return RunData(folder, _read_json(folder / "config.json"), _read_csv(folder / "history.csv"),
                   _flatten(_read_json(folder / "metrics.json")), latents, light, rows, domain_profile(light, phase),
                   _checked(eval_profile), order[:n_cards], _attribution(path, light), phase)


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
        from kit.corpus.attribution import attribution_notice
        return attribution_notice(sources)
    except ValueError:
        return "Text from: " + (", ".join(sources) or "unknown sources") + ". Check each source's licence."


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


def metrics_frame(run: RunData) -> pd.DataFrame:
    return pd.DataFrame({"metric": list(run.metrics), "value": list(run.metrics.values())})


def summary_frame(run: RunData) -> pd.DataFrame:
    """Latents with top samples, their total and average per latent (displayed phase), interval and held-out
    samples, and the run's top-k retention."""
    n_with, total = len(run.latents), int(run.latents["n_samples"].sum())
    d_latent = run.config.get("latents", {}).get("d_latent")
    values = {"latents": d_latent, "latents with samples": n_with,
              f"total top samples ({run.phase or 'all'} pass)": total,
              "average samples per latent with samples": total / n_with if n_with else float("nan"),
              "interval samples": len(select(run.light, run.phase, "interval")),
              "held-out top samples": len(select(run.light, "heldout", "top")) if run.phase else None,
              "top-k retention (all latents)": run.metrics.get("topk_retention")}
    return pd.DataFrame({"quantity": list(values), "value": list(values.values())}).dropna()


def top_frame(run: RunData, names: dict, n: int = 50) -> pd.DataFrame:
    """The `n` strongest latents: max, mean, sample count, top-k retention, label."""
    cols = [c for c in ("latent", "max_activation", "mean_activation", "n_samples", "topk_retention")
            if c in run.latents]
    table = run.latents.set_index("latent", drop=False).loc[strongest(run.latents, n), cols]
    if names:
        table = table.assign(label=[names.get(int(i), "") for i in table["latent"]])
    return table.reset_index(drop=True)


def specialization_columns(interpretation) -> list[str]:
    """The columns of the specialization table the report shows, at the level that classifies."""
    return ["latent", "category", "top_domain", "n_documents", interpretation.column("top_share"),
            interpretation.column("lift"), interpretation.column("q"), "identity_lift", "topic_specialist", "label"]


def specialized_frame(interpretation, n: int = 30) -> pd.DataFrame:
    """The `n` most specialized latents (lowest q, then highest lift) under the interpretation's column names."""
    q, lift = interpretation.column("q"), interpretation.column("lift")
    table = interpretation.specialization.sort_values([q, lift, "latent"], ascending=[True, False, True],
                                                      na_position="last")
    return table[specialization_columns(interpretation)].head(n).reset_index(drop=True)


def nulls_frame(interpretation) -> pd.DataFrame:
    """One row per summary measure: the trained transcoder, each null, and the margins between them."""
    both = pd.concat([interpretation.summary, interpretation.margins])
    return both.T.rename_axis("measure").reset_index()


def lens_frame(interpretation, latents: list) -> pd.DataFrame:
    """latent, promoted, suppressed (token lists) for the given latents the lens covers, in their order."""
    lists = interpretation.lens_lists().set_index("latent", drop=False)
    return lists.loc[[i for i in latents if i in lists.index]].reset_index(drop=True)


def dict_frame(d: dict) -> pd.DataFrame:
    """A dict of numbers as (name, value) rows."""
    return pd.DataFrame({"name": list(d), "value": [fmt(v) for v in d.values()]})


def example_row(run: RunData, latent: int):
    """The latent's strongest top sample in the displayed phase, as a dict (None if it has none)."""
    rows = select(run.rows[run.rows["latent"] == latent], run.phase, "top")
    return rows.sort_values("rank").iloc[0].to_dict() if len(rows) else None


def report_title(run: RunData) -> str:
    """The run's name with the model, layer and text it was trained on (a user's own source or model included)."""
    c = run.config
    name = c.get("name", run.folder.name)
    return f"{name}: {c.get('model', '?')}, layer {c.get('layer', '?')}, on {c.get('source', '?')}"
