"""A small synthetic run folder with the columns of docs/run-folder.md, for the widget, report and browser tests.

Latent 2's strongest window holds a `<script>alert(1)</script>` token, its domain is `<b>legal</b>` and the
attribution notice carries markup too, so every test can check that text from data is shown as text.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCRIPT = "<script>alert(1)</script>"
DOMAINS = ["code", "math_science", "medicine", "<b>legal</b>"]
WORDS = [" the", " cat", "\n", " def", " x", " =", "\t", " 1", " dose", " court", " &", ' "q"', " sum", ""]
ATTRIBUTION = "Text from a test corpus. Sources: <i>Wikipedia</i> CC BY-SA 4.0 & friends."


def make_samples(n_latents: int = 6, k: int = 4, n_bins: int = 3, window: int = 12, seed: int = 0) -> pd.DataFrame:
    """Rows per (latent, phase, kind, rank): top-k and one interval sample per bin, in both phases."""
    rng = np.random.default_rng(seed)
    rows = []
    for latent in range(n_latents):
        peak = 1.0 + latent
        for phase in ("training", "final"):
            slots = [("top", -1, r) for r in range(k)] + [("interval", b, 0) for b in range(n_bins)]
            for kind, interval, rank in slots:
                act = peak * (1 - 0.1 * rank) if kind == "top" else peak * (interval + 0.5) / (n_bins + 1)
                ctx = latent * 100 + rank + (1000 * interval if kind == "interval" else 0) + (phase == "final") * rank
                tokens = [WORDS[i] for i in rng.integers(0, len(WORDS), window)]
                hit = int(rng.integers(2, window - 2))
                if latent == 2 and kind == "top" and rank == 0:
                    tokens[hit] = SCRIPT
                acts = np.clip(rng.normal(0, act / 4, window), 0, None)
                acts[hit] = act
                rows.append(dict(latent=latent, phase=phase, kind=kind, rank=rank, interval=interval,
                                 activation=float(act), activation_final=float(act), step=10 * rank,
                                 global_id=ctx * 64 + hit + 1, context_index=ctx, doc_id=ctx // 2,
                                 position=hit + 1, doc_position=hit + 1,
                                 domain=DOMAINS[(latent + (rank % 2) * (latent % 2)) % len(DOMAINS)],
                                 source="testcorpus", context_ids=list(range(window)), context_tokens=tokens,
                                 context_acts=[float(a) for a in acts], token_index=hit))
    return pd.DataFrame(rows)


def write_run(folder: Path, n_latents: int = 6) -> Path:
    """config.json, history.csv, metrics.json, samples.parquet (with `attribution`) and latents.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"name": "fake<run>", "model": "embedded", "layer": 8, "source": "embedded",
              "latents": {"d_latent": 8, "activation": "topk", "k": 2, "skip": False},
              "store": {"ctx_len": 64}, "train": {"steps": 100, "lr": 1e-3, "warmup_steps": 10}}
    (folder / "config.json").write_text(json.dumps(config))
    steps = np.arange(0, 101, 10)
    lr = np.where(steps < 10, 1e-3 * (steps + 1) / 10, 1e-3 * (1 - 0.9 * (steps - 10) / 90))
    pd.DataFrame({"step": steps, "tokens": steps * 256, "lr": lr, "loss": 2 / (1 + steps), "fvu": 1 / (1 + steps),
                  "l0": 2.0, "dead_frac": 0.25, "tokens_per_s": 1000.0}).to_csv(folder / "history.csv", index=False)
    metrics = {"fvu": 0.2, "explained_variance": 0.8, "l0": 2.0, "dead_frac": 0.25, "delta_ce": 0.1,
               "ce_loss_recovered": 0.9, "drift": 0.5, "collector": {"total_samples": 48}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    df = make_samples(n_latents)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, b"attribution": ATTRIBUTION.encode()})
    pq.write_table(table, folder / "samples.parquet")
    top = df[(df.phase == "training") & (df.kind == "top")].groupby("latent")["activation"]
    pd.DataFrame({"latent": range(8)}).assign(
        max_activation=top.max(), mean_activation=top.mean(), n_samples=top.size(), drift=0.5
    ).fillna({"n_samples": 0}).to_csv(folder / "latents.csv", index=False)
    return folder
