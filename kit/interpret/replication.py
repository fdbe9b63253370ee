"""Do the run's specialists specialize on a second labelled source? By default the topic set (news articles in one
register, never trained on: `kit.corpus.topics`), where a training domain maps to the topic on the same subject
(`TOPIC_MAPPING`: politics → politics, medicine → health).

`replicate` runs the trained transcoder (and the random null) over the second source's documents and classifies
every latent there with both nulls (`specialization_with_nulls`, the same thresholds). For each mapped pair
(domain D → topic T), of the run's n_D specialists for D, `overlap` are specialists for T on the second set:
share = overlap / n_D, and share_alive = overlap / n, n those of them alive on the second set. Chance: were the K
specialists for T there any K of the M latents alive there, the overlap would be hypergeometric (M, K, n):
expected = n·K / M, p = P(overlap ≥ observed) (`scipy.stats.hypergeom.sf`). The summary gives the second set's
class shares, of all latents and of alive ones, for trained, shuffled and random, and trained minus each null.

Cost: one context per document, each cut to its first ctx_len - 1 tokens (the document is the unit, so the cap buys
as many of them as it can), at most `contexts` of them (`REPLICATION_CONTEXTS`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from kit.config import SpecializationConfig
from kit.interpret.specialization import SpecializationResult, specialization_with_nulls
from kit.lm.stream import unit_hash

REPLICATION_CONTEXTS = 256
"""Default cap on the second source's documents (one context of the run's ctx_len each)."""
HOLDOUT_SHARE = 0.9
"""The store routes this share of the documents to its held-out set, the one scored here; the rest are never run."""
COLUMNS = {"domain": "object", "topic": "object", "run_specialists": "int64", "overlap": "int64",
           "share": "float64", "share_alive": "float64", "expected": "float64", "p": "float64", "drawn": "int64",
           "second_specialists": "int64", "second_alive": "int64"}
"""The replication table: one row per mapped (domain, topic) pair present on both sides."""


@dataclass(frozen=True)
class Replication:
    """The run's specialists on a second labelled source."""

    table: pd.DataFrame
    """Per mapped pair: `COLUMNS` (module docstring)."""
    summary: pd.DataFrame
    """Index `transcoder` (trained, shuffled, random, 'trained - shuffled', 'trained - random'): the second set's
    class shares of all latents and of alive ones, and per-topic specialists."""
    info: dict
    """source, domain_field, mapping, contexts, documents and tokens scored, documents_per_label."""
    result: SpecializationResult
    """The second set's full specialization (per-latent tables of trained and both nulls)."""


def _field(record: dict, name: str):
    for part in name.split("."):  # dotted fields reach into nested records, e.g. meta.pile_set_name
        record = record[part]
    return record


def one_context_records(source, tokenizer, domain_field: str, ctx_len: int, contexts: int, seed: int,
                        min_tokens: int = 8, text_field: str = "text") -> tuple[list[dict], int]:
    """The first records of `source`, each pre-tokenized and cut to `ctx_len - 1` tokens, until `contexts` of them
    would be held out by a store of this `seed` (at least one more goes to training, as the store needs); and how
    many are held out."""
    bos, records, held, trained = tokenizer.bos_token_id, [], 0, 0
    for index, record in enumerate(source):
        ids = [t for t in tokenizer(_field(record, text_field), add_special_tokens=False)["input_ids"] if t != bos]
        doc_id = int(record.get("doc_id", index))
        records.append({"text": "", "input_ids": ids[:ctx_len - 1], "doc_id": doc_id,
                        "domain": str(_field(record, domain_field))})
        if len(ids) >= min_tokens:
            out = unit_hash(seed, doc_id) < HOLDOUT_SHARE
            held, trained = held + out, trained + (not out)
        if held >= contexts and trained:
            break
    if not held or not trained:
        raise ValueError(f"the second source gave {held} held-out and {trained} other documents of at least "
                         f"{min_tokens} tokens; it needs one of each")
    return records, min(held, contexts)


def second_store(store, source, domain_field: str, contexts: int, text_field: str = "text"):
    """A store of the run's model, layer and settings over `source`, its held-out set one context per document."""
    import datasets

    from kit.lm.store import TranscoderActivationsStore
    cfg = store.config
    records, held = one_context_records(source, store.tokenizer, domain_field, cfg.ctx_len, contexts, cfg.seed,
                                        cfg.min_tokens, text_field)
    config = dataclasses.replace(cfg, pack=False, holdout_contexts=held, holdout_share=HOLDOUT_SHARE,
                                 text_field="text", domain_field="domain")
    return TranscoderActivationsStore(store.model, datasets.Dataset.from_list(records), store.layer,
                                      tokenizer=store.tokenizer, config=config)


def overlap_table(run_table: pd.DataFrame, second_table: pd.DataFrame, mapping: dict, domains=None,
                  topics=None) -> pd.DataFrame:
    """`COLUMNS` per pair of `mapping` whose domain is one of the run's `domains` and topic one of the second set's
    `topics` (default: the top domains of `run_table` and `second_table`, `latent_table` frames of the same
    latents)."""
    spec_run = run_table["category"].to_numpy() == "specialist"
    alive, spec = second_table["category"].to_numpy() != "dead", second_table["category"].to_numpy() == "specialist"
    domains = set(run_table["top_domain"] if domains is None else domains)
    topics = set(second_table["top_domain"] if topics is None else topics)
    rows = []
    for domain, topic in mapping.items():
        if domain not in domains or topic not in topics:
            continue
        mine = spec_run & (run_table["top_domain"].to_numpy() == domain)
        theirs = spec & (second_table["top_domain"].to_numpy() == topic)
        m, k, n, overlap = int(alive.sum()), int(theirs.sum()), int((mine & alive).sum()), int((mine & theirs).sum())
        rows.append({"domain": domain, "topic": topic, "run_specialists": int(mine.sum()), "overlap": overlap,
                     "share": overlap / mine.sum() if mine.any() else np.nan,
                     "share_alive": overlap / n if n else np.nan, "expected": n * k / m if m else 0.0,
                     "p": float(sps.hypergeom.sf(overlap - 1, m, k, n)) if n else 1.0, "drawn": n,
                     "second_specialists": k, "second_alive": m})
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def _trained(run) -> tuple[pd.DataFrame, list | None]:
    """The run's trained latent table and evaluation domains (None where it does not say) from a
    `SpecializationResult`, an `Interpretation` or the table itself."""
    if isinstance(run, pd.DataFrame):
        return run, None
    if hasattr(run, "tables"):
        return run.tables["trained"], list(run.stats.domain_names)
    return run.specialization, run.base_rates["domain"].tolist()


def replicate(run, source=None, domain_field: str = "topic", mapping: dict | None = None, *, transcoder, store,
              config: SpecializationConfig | None = None, contexts: int = REPLICATION_CONTEXTS,
              text_field: str = "text") -> Replication:
    """The run's specialists on `source` (default: `kit.corpus.topics.topic_set`, with `TOPIC_MAPPING`; another
    source without `mapping` pairs equal names). `run`: the run's `SpecializationResult`, `Interpretation` or
    trained latent table; `transcoder` and `store` (the model, layer and settings): the run's own."""
    table, domains = _trained(run)
    config = config or getattr(run, "config", None) or SpecializationConfig()
    if source is None:
        from kit.corpus.topics import TOPIC_MAPPING, topic_set
        source, mapping, name = topic_set(config.seed), mapping or TOPIC_MAPPING, "topic set"
    else:
        name = type(source).__name__
    second = second_store(store, source, domain_field, contexts, text_field)
    result = specialization_with_nulls(transcoder, second, second.holdout_indices, config)
    mapping = mapping or {d: d for d in result.stats.domain_names}
    summary = pd.concat([result.summary, result.margins]).rename_axis("transcoder")
    info = {"source": str(name), "domain_field": domain_field, "mapping": dict(mapping),
            "contexts": len(second.holdout_indices), "documents": len(result.stats.tokens_N),
            "tokens": int(result.stats.tokens_N.sum()),
            "documents_per_label": dict(zip(result.base_rates["domain"], result.base_rates["documents"].tolist()))}
    table = overlap_table(table, result.tables["trained"], mapping, domains, result.stats.domain_names)
    return Replication(table, summary, info, result)
