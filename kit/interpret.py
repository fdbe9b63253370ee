"""Read a finished run: specialization with both nulls, text patterns, logit lens and labels, saved beside it.

`interpret_run` writes `specialization.csv` (one row per latent, with its label), `specialization.json` (summary,
margins over the nulls, strength hierarchy, caveats) and `patterns.json` into the run folder, and returns the
`analysis` and `patterns` dicts that `kit.report.write_report` takes. `load_interpretation` reads them back, so a
report can be rebuilt without the model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from kit.analysis import (SpecializationConfig, domain_profile, hierarchy_sentence, specialization_with_nulls,
                          strength_hierarchy, style_caveat)
from kit.patterns import latent_labels, length_stats, logit_lens, logit_lens_caveat, top_rows, top_tokens
from kit.transcoder import Transcoder

LENS_LATENTS = 64


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
    lens = logit_lens(tc, store.model, store.tokenizer, latents=strongest, k=8)
    hierarchy = strength_hierarchy(table)
    summary = {name: {k: _num(v) for k, v in row.items()} for name, row in result.summary.iterrows()}
    margins = {name: {k: _num(v) for k, v in row.items()} for name, row in result.margins.iterrows()}
    spec = {"summary": summary, "margins": margins, "hierarchy": {k: _num(v) for k, v in hierarchy.items()},
            "hierarchy_sentence": hierarchy_sentence(hierarchy), "caveat": style_caveat(result),
            "logit_lens_caveat": logit_lens_caveat(store.model, store.layer), "eval_contexts": len(store.holdout_indices),
            "config": config.__dict__}
    lengths = length_stats(rows, store, store.holdout_indices, store.tokenizer)
    _save(run_dir, table, spec, domain_profile(result.stats, "rate"), words, lens, lengths,
          top_tokens(rows, unit="word", per_latent=False, n=30))
    return load_interpretation(run_dir)


def _num(v):
    try:
        return float(v) if not isinstance(v, str) else v
    except (TypeError, ValueError):
        return str(v)


def _save(run_dir: Path, table, spec, profile, words, lens, lengths, overall) -> None:
    table.to_csv(run_dir / "specialization.csv", index=False)
    profile.to_csv(run_dir / "domain_profile.csv")
    words.to_csv(run_dir / "top_words.csv", index=False)
    overall.to_csv(run_dir / "top_words_overall.csv", index=False)
    lens.to_csv(run_dir / "logit_lens.csv", index=False)
    lengths.reset_index().to_csv(run_dir / "length_stats.csv", index=False)
    tmp = run_dir / ".specialization.json.tmp"
    tmp.write_text(json.dumps(spec, indent=2, default=str))
    os.replace(tmp, run_dir / "specialization.json")


def load_interpretation(run_dir) -> tuple[dict, dict] | tuple[None, None]:
    """The saved `(analysis, patterns)` of a run folder, or `(None, None)` when it was never interpreted."""
    run_dir = Path(run_dir)
    if not (run_dir / "specialization.json").exists():
        return None, None
    spec = json.loads((run_dir / "specialization.json").read_text())
    table = pd.read_csv(run_dir / "specialization.csv")
    profile = pd.read_csv(run_dir / "domain_profile.csv", index_col=0)
    long = profile.rename_axis("latent").reset_index().melt(id_vars="latent", var_name="domain", value_name="share")
    analysis = {"latents": table.rename(columns={"category": "class", "context_top_share": "top_share",
                                                 "context_lift": "top_lift", "context_q": "q_value"}),
                "summary": spec["summary"] | {"margin " + k: v for k, v in spec["margins"].items()},
                "hierarchy": spec["hierarchy_sentence"], "caveat": spec["caveat"], "profile": long}
    lens = pd.read_csv(run_dir / "logit_lens.csv", keep_default_na=False)
    grouped = lens.sort_values(["latent", "rank"]).groupby("latent")
    lens_table = pd.DataFrame({"promoted": grouped["promoted"].agg(list), "suppressed": grouped["suppressed"].agg(list)})
    lengths = pd.read_csv(run_dir / "length_stats.csv")
    patterns = {"top_words": pd.read_csv(run_dir / "top_words.csv", keep_default_na=False),
                "length_stats": {f"{r.what} ({r.unit})": f"mean {r.mean:.1f}, median {r.median:.0f}, max {r.max:.0f}"
                                 for r in lengths.itertuples()},
                "logit_lens": lens_table.reset_index(), "logit_lens_caveat": spec["logit_lens_caveat"],
                "labels": dict(zip(table["latent"], table["label"]))}
    return analysis, patterns
