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
    """Rows per (latent, phase, kind, rank): top-k and one interval sample per bin, in the three phases. Held-out
    rows (their own contexts, activations 0.8x) draw from a second generator, so the other rows stay as they were."""
    rng, rng_held = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    rows = []
    for latent in range(n_latents):
        peak = 1.0 + latent
        for phase in ("training", "final", "heldout"):
            rng_phase = rng_held if phase == "heldout" else rng
            slots = [("top", -1, r) for r in range(k)] + [("interval", b, 0) for b in range(n_bins)]
            for kind, interval, rank in slots:
                act = peak * (1 - 0.1 * rank) if kind == "top" else peak * (interval + 0.5) / (n_bins + 1)
                act *= 0.8 if phase == "heldout" else 1.0
                ctx = latent * 100 + rank + (1000 * interval if kind == "interval" else 0) + (phase == "final") * rank
                ctx += 10_000 if phase == "heldout" else 0
                tokens = [WORDS[i] for i in rng_phase.integers(0, len(WORDS), window)]
                hit = int(rng_phase.integers(2, window - 2))
                if latent == 2 and kind == "top" and rank == 0:
                    tokens[hit] = SCRIPT
                acts = np.clip(rng_phase.normal(0, act / 4, window), 0, None)
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
               "ce_loss_recovered": 0.9, "topk_retention": 0.5, "collector": {"total_samples": 48}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    df = make_samples(n_latents)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, b"attribution": ATTRIBUTION.encode()})
    pq.write_table(table, folder / "samples.parquet")
    top = df[(df.phase == "training") & (df.kind == "top")].groupby("latent")["activation"]
    pd.DataFrame({"latent": range(8)}).assign(
        max_activation=top.max(), mean_activation=top.mean(), n_samples=top.size(), topk_retention=0.5
    ).fillna({"n_samples": 0}).to_csv(folder / "latents.csv", index=False)
    return folder


LEXICAL_ID = 99
"""A vocabulary id that occurs in 'code' documents only: latent 7 fires on it, a specialist token identity explains."""
TOPICS = ["politics", "health", "sport"]
MAPPING = {"medicine": "health", "code": "politics"}


def synthetic_documents(names, n_docs: int, doc_len: int, seed: int, topic: int, lexical: int | None = None):
    """Per-token activations of 8 latents, document ids, domain codes and vocabulary ids (0-39): 2 fires on a
    fifth of the tokens of domain `topic`, whatever they are, 0, 1 and 3-5 on 3% of all tokens, 6 never, 7 on
    LEXICAL_ID, which half the documents of domain `lexical` hold."""
    rng, rng_ids = np.random.default_rng(seed), np.random.default_rng(seed + 7)
    doc_M = np.repeat(np.arange(n_docs * len(names)), doc_len)
    dom_M = doc_M // n_docs
    acts = (rng.random((len(doc_M), 8)) < 0.03) * rng.uniform(0.5, 2.0, (len(doc_M), 8))
    acts[:, 2] = np.where(dom_M == topic, (rng.random(len(doc_M)) < 0.2) * 3.0, 0.0)
    tok_M = rng_ids.integers(0, 40, len(doc_M))
    if lexical is not None:
        tok_M[(dom_M == lexical) & (doc_M % 2 == 0) & (np.arange(len(doc_M)) % doc_len == 3)] = LEXICAL_ID
    acts[:, 6] = 0.0
    acts[:, 7] = (tok_M == LEXICAL_ID) * 1.5
    return acts, doc_M, dom_M, tok_M


def make_replication(run_table, n_docs: int = 30, doc_len: int = 16, seed: int = 1):
    """A `Replication` on synthetic topic-set documents (TOPICS): latent 2 specializes in 'health' there."""
    from kit.interpret.analysis import DocumentStats, Replication, overlap_table, specialization_from_stats
    acts, doc_M, dom_M, tok_M = synthetic_documents(TOPICS, n_docs, doc_len, seed, topic=1)
    stats = DocumentStats.from_token_acts(acts, doc_M, dom_M, TOPICS, token_M=tok_M)
    result = specialization_from_stats(stats)
    info = {"source": "topic set", "domain_field": "topic", "mapping": MAPPING, "contexts": len(stats.tokens_N),
            "documents": len(stats.tokens_N), "tokens": int(stats.tokens_N.sum()),
            "documents_per_label": dict(zip(result.base_rates["domain"], result.base_rates["documents"].tolist()))}
    return Replication(overlap_table(run_table, result.tables["trained"], MAPPING),
                       pd.concat([result.summary, result.margins]).rename_axis("transcoder"), info, result)


def make_interpretation(n_docs: int = 40, doc_len: int = 16, seed: int = 0, replicated: bool = True):
    """An `Interpretation` of the run's 8 latents from synthetic held-out documents of the four DOMAINS
    (`synthetic_documents`: 2 a topic specialist of 'medicine', 7 a 'code' specialist that token identity explains,
    6 dead), with tokens a CSV could mangle, and a replication on synthetic topics (`make_replication`)."""
    from kit.interpret.analysis import DocumentStats, specialization_from_stats
    from kit.interpret.interpretation import assemble
    acts, doc_M, dom_M, tok_M = synthetic_documents(DOMAINS, n_docs, doc_len, seed, DOMAINS.index("medicine"),
                                                    lexical=DOMAINS.index("code"))
    stats = DocumentStats.from_token_acts(acts, doc_M, dom_M, DOMAINS, token_M=tok_M)
    result = specialization_from_stats(stats)
    labels = [f"words {i}" if i != 2 else f"dose {SCRIPT}" for i in range(8)]
    words = pd.DataFrame({"latent": [2, 2, 2], "rank": [0, 1, 2], "text": [" dose", SCRIPT, "nan"],
                          "weight": [3.0, 1.0, 0.5], "count": [3, 1, 1]})
    symbols = pd.DataFrame({"latent": [4, 4], "rank": [0, 1], "text": ["\\n", ""], "weight": [2.0, 1.0],
                            "count": [2, 1]})
    lens = pd.DataFrame({"latent": [2, 2, 5], "rank": [0, 1, 0], "promoted_id": [7, 8, 9],
                         "promoted": [" dose", "\r", "NULL"], "promoted_logit": [2.5, 1.25, 1.0],
                         "suppressed_id": [1, 2, 3], "suppressed": ["\n", "", " the"],
                         "suppressed_logit": [-1.0, -0.5, -0.25]})
    lengths = pd.DataFrame({"what": ["sample windows"], "unit": ["tokens"], "n": [48], "mean": [12.0],
                            "median": [12.0], "min": [12], "max": [12]}).set_index(["what", "unit"])
    return assemble(result, labels, words=words, tokens=symbols, overall=words.drop(columns="latent"),
                    lengths=lengths, lens=lens, lens_caveat="Direct path only.", eval_contexts=n_docs,
                    replication=make_replication(result.tables["trained"]) if replicated else None,
                    replication_info=None if replicated else {"skipped": "turned off"})


def write_interpretation(folder: Path, **options) -> Path:
    """`make_interpretation(**options)` saved into the run folder, as `interpret_run` saves it."""
    make_interpretation(**options).save(folder)
    return folder
