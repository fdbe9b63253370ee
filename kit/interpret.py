"""Read a finished run: specialization with both nulls, text patterns, logit lens and labels, saved beside it.

`interpret_run` writes `specialization.csv` (one row per latent, with its label), `specialization.json` (summary,
margins over the nulls, base rates, strength hierarchy, caveats), `domain_profile.csv` (`kit.analysis.profile_table`:
per latent and domain, the held-out documents it fires in and their share) and the pattern tables into the run
folder, and returns the `analysis` and `patterns` dicts that `kit.report.write_report` takes. `load_interpretation`
reads them back, so a report can be rebuilt without the model.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd

from kit.analysis import (SpecializationConfig, SpecializationResult, hierarchy_sentence, profile_table,
                          specialization_with_nulls, strength_hierarchy, style_caveat)
from kit.patterns import latent_labels, length_stats, logit_lens, logit_lens_caveat, top_rows, top_tokens
from kit.transcoder import Transcoder

LENS_LATENTS = 64
# 2: documents are the units (document_* columns, a long domain_profile.csv); older folders are interpreted again.
VERSION = 2
# specialization.csv's classifying columns under the names the report and the notebooks use
SHORT_NAMES = {"category": "class", "document_top_share": "top_share", "document_lift": "top_lift",
               "document_q": "q_value"}


def interpret_run(run_dir, store, config: SpecializationConfig = SpecializationConfig(), progress: bool = True):
    """Analyse the run in `run_dir` on the store's held-out contexts; returns `(analysis, patterns)`."""
    run_dir = Path(run_dir)
    tc = Transcoder.load(run_dir / "transcoder", device=next(store.model.parameters()).device)
    result = specialization_with_nulls(tc, store, store.holdout_indices, config)
    samples = pd.read_parquet(run_dir / "samples.parquet")
    rows = top_rows(samples, phase="final")
    words = top_tokens(rows, unit="word", per_latent=True, n=5)
    symbols = top_tokens(rows, unit="token", per_latent=True, n=3, symbols=True)
    table = result.tables["trained"].copy()
    table["label"] = latent_labels(table, words, tokens=symbols).to_numpy()
    strongest = (samples[samples.kind == "top"].groupby("latent")["activation"].max()
                 .sort_values(ascending=False).index[:LENS_LATENTS].to_numpy())
    notes = {"logit_lens_caveat": logit_lens_caveat(store.model, store.layer),
             "eval_contexts": len(store.holdout_indices)}
    save_interpretation(run_dir, result, table, notes, words=words,
                        lens=logit_lens(tc, store.model, store.tokenizer, latents=strongest, k=8),
                        lengths=length_stats(rows, store, store.holdout_indices, store.tokenizer),
                        overall=top_tokens(rows, unit="word", per_latent=False, n=30))
    return load_interpretation(run_dir)


def save_interpretation(run_dir, result: SpecializationResult, table: pd.DataFrame, notes: dict, *,
                        words: pd.DataFrame, lens: pd.DataFrame, lengths: pd.DataFrame, overall: pd.DataFrame) -> None:
    """Write the files `load_interpretation` reads. `table`: the trained latent table with a `label` column;
    `notes`: `logit_lens_caveat` and anything else for specialization.json."""
    run_dir = Path(run_dir)
    hierarchy = strength_hierarchy(table)
    spec = {"version": VERSION, "summary": _records(result.summary), "margins": _records(result.margins),
            "hierarchy": {k: _num(v) for k, v in hierarchy.items()},
            "hierarchy_sentence": hierarchy_sentence(hierarchy), "caveat": style_caveat(result),
            "eval_documents": len(result.stats.tokens_N), "eval_tokens": int(result.stats.tokens_N.sum()),
            "base_rates": result.base_rates.to_dict("records"),
            "config": dataclasses.asdict(result.config)} | notes
    table.to_csv(run_dir / "specialization.csv", index=False)
    profile_table(result.stats).to_csv(run_dir / "domain_profile.csv", index=False)
    words.to_csv(run_dir / "top_words.csv", index=False)
    overall.to_csv(run_dir / "top_words_overall.csv", index=False)
    lens.to_csv(run_dir / "logit_lens.csv", index=False)
    lengths.reset_index().to_csv(run_dir / "length_stats.csv", index=False)
    tmp = run_dir / ".specialization.json.tmp"
    tmp.write_text(json.dumps(spec, indent=2, default=str))
    os.replace(tmp, run_dir / "specialization.json")  # last: its presence says the others are complete


def _records(frame: pd.DataFrame) -> dict:
    return {name: {k: _num(v) for k, v in row.items()} for name, row in frame.iterrows()}


def _num(v):
    try:
        return float(v) if not isinstance(v, str) else v
    except (TypeError, ValueError):
        return str(v)


def load_interpretation(run_dir) -> tuple[dict, dict] | tuple[None, None]:
    """The saved `(analysis, patterns)` of a run folder, or `(None, None)` when it was never interpreted (or by an
    older kit, whose units were contexts)."""
    run_dir = Path(run_dir)
    if not (run_dir / "specialization.json").exists():
        return None, None
    spec = json.loads((run_dir / "specialization.json").read_text())
    if spec.get("version") != VERSION:
        return None, None
    table = pd.read_csv(run_dir / "specialization.csv")
    # an empty domain name ("" when the source has no domain field) stays a string
    profile = pd.read_csv(run_dir / "domain_profile.csv", dtype={"domain": str}, keep_default_na=False,
                          na_values={c: [""] for c in ("documents", "share", "lift", "rate")})
    analysis = {"latents": table.rename(columns=SHORT_NAMES),
                "summary": spec["summary"] | {"margin " + k: v for k, v in spec["margins"].items()},
                "hierarchy": spec["hierarchy_sentence"], "caveat": spec["caveat"], "profile": profile}
    lens = pd.read_csv(run_dir / "logit_lens.csv", keep_default_na=False)
    grouped = lens.sort_values(["latent", "rank"]).groupby("latent")
    lens_table = pd.DataFrame({"promoted": grouped["promoted"].agg(list),
                               "suppressed": grouped["suppressed"].agg(list)})
    lengths = pd.read_csv(run_dir / "length_stats.csv")
    patterns = {"top_words": pd.read_csv(run_dir / "top_words.csv", keep_default_na=False),
                "length_stats": {f"{r.what} ({r.unit})": f"mean {r.mean:.1f}, median {r.median:.0f}, max {r.max:.0f}"
                                 for r in lengths.itertuples()},
                "logit_lens": lens_table.reset_index(), "logit_lens_caveat": spec["logit_lens_caveat"],
                "labels": dict(zip(table["latent"], table["label"]))}
    return analysis, patterns
