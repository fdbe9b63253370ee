"""Replication on a second labelled source: the overlap statistic against a hand hypergeometric count, the
one-context-per-document records, and (slow) the topic set through the real model."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from kit.config import SpecializationConfig, TranscoderConfig
from kit.interpret import analysis
from kit.interpret.replication import COLUMNS, HOLDOUT_SHARE, one_context_records, overlap_table, replicate
from kit.lm.stream import unit_hash


def tables(seed=0, n=60):
    """Run table: latents 0-9 medicine specialists, 10-14 politics ones. Second set: 0-6 and 40-44 health
    specialists, politics ones drawn at random, 50-59 dead."""
    gen = np.random.default_rng(seed)
    run = pd.DataFrame({"category": ["generalist"] * n, "top_domain": gen.choice(["medicine", "politics", "x"], n)})
    run.loc[0:9, ["category", "top_domain"]] = ["specialist", "medicine"]
    run.loc[10:14, ["category", "top_domain"]] = ["specialist", "politics"]
    second = pd.DataFrame({"category": ["generalist"] * n, "top_domain": gen.choice(["health", "politics"], n)})
    second.loc[list(range(7)) + list(range(40, 45)), ["category", "top_domain"]] = ["specialist", "health"]
    second.loc[gen.choice(np.arange(15, 40), 6, replace=False), ["category", "top_domain"]] = ["specialist",
                                                                                              "politics"]
    second.loc[50:59, "category"] = "dead"
    return run, second


def test_overlap_against_a_hand_hypergeometric():
    run, second = tables()
    out = overlap_table(run, second, {"medicine": "health", "politics": "politics", "absent": "health"})
    assert list(out.columns) == list(COLUMNS) and out["domain"].tolist() == ["medicine", "politics"]
    med = out.iloc[0]
    # population: the 50 latents alive on the second set; 12 health specialists there; 10 run specialists drawn
    assert (med.second_alive, med.second_specialists, med.drawn, med.overlap) == (50, 12, 10, 7)
    assert med.expected == pytest.approx(10 * 12 / 50) and med.share == 0.7 and med.share_alive == 0.7
    by_hand = sum(sps.hypergeom.pmf(k, 50, 12, 10) for k in range(7, 11))
    assert med.p == pytest.approx(by_hand) and med.p < 1e-3
    pol = out.iloc[1]
    assert pol.overlap == 0 and pol.run_specialists == 5 and pol.p == 1.0, "politics specialists were not replicated"


def test_pairs_follow_the_domains_present_not_the_top_domains():
    run, second = tables()  # no latent has 'sport' as its top domain on the second set
    out = overlap_table(run, second, {"medicine": "sport", "x": "absent"}, domains=["medicine", "x"],
                        topics=["health", "sport"])
    assert out["topic"].tolist() == ["sport"] and out.loc[0, "overlap"] == 0 and out.loc[0, "p"] == 1.0
    assert out.loc[0, "expected"] == 0.0 and out.loc[0, "drawn"] == 10
    assert overlap_table(run, second, {"medicine": "sport"}).empty


def test_dead_latents_leave_the_draw():
    run, second = tables()
    second.loc[0:4, "category"] = "dead"  # five of the medicine specialists never fire on the second set
    med = overlap_table(run, second, {"medicine": "health"}).iloc[0]
    assert (med.drawn, med.overlap, med.second_alive) == (5, 2, 45)
    assert med.share == 0.2 and med.share_alive == 0.4 and med.expected == pytest.approx(5 * 7 / 45)


class CharTokenizer:
    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_one_context_per_document_records():
    source = [{"text": "ab" * (i % 9 + 2), "meta": {"topic": f"t{i % 3}"}, "doc_id": 1000 + i} for i in range(80)]
    records, held = one_context_records(source, CharTokenizer(), "meta.topic", ctx_len=10, contexts=12, seed=3)
    assert held == 12 and all(len(r["input_ids"]) <= 9 for r in records)
    assert records[4] == {"text": "", "input_ids": ([97, 98] * 6)[:9], "doc_id": 1004, "domain": "t1"}
    long_enough = [r for r in records if len(r["input_ids"]) >= 8]
    out = [unit_hash(3, r["doc_id"]) < HOLDOUT_SHARE for r in long_enough]
    assert sum(out) >= 12 and not all(out), "the cap is held out, and one document goes to training (stores need one)"
    assert sum(out[:-1]) < 12 or all(out[:-1]), "and the records stop there"
    with pytest.raises(ValueError, match="needs one of each"):
        one_context_records(source[:1], CharTokenizer(), "meta.topic", ctx_len=10, contexts=12, seed=3)


def test_replicate_is_public_from_the_analysis():
    assert analysis.replicate is replicate and analysis.overlap_table is overlap_table


@pytest.fixture(scope="module")
def real_store(embedded):
    from kit.lm.store import TranscoderActivationsStore
    model, tok = embedded
    return TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, ctx_len=64, holdout_contexts=12,
                                      batch_size=64, refill_contexts=8, shuffle_contexts=16)


def test_replicate_on_the_topic_set(real_store):
    from kit.corpus.topics import TOPIC_MAPPING, TOPICS, topic_set
    from kit.interpret.analysis import specialization_with_nulls
    from kit.model.transcoder import Transcoder
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=96, activation="topk", k=8))
    config = SpecializationConfig(min_firing_documents=2)
    run = specialization_with_nulls(tc, real_store, real_store.holdout_indices, config)
    rep = replicate(run, transcoder=tc, store=real_store, contexts=24)
    assert rep.info["contexts"] == rep.info["documents"] == 24 and rep.info["mapping"] == TOPIC_MAPPING
    stats = rep.result.stats
    assert set(stats.domain_names) <= set(TOPICS) and stats.tokens_N.max() <= 63, "one context per document"
    articles = {a: t for a, t in zip(topic_set()["doc_id"], topic_set()["text"])}
    first = int(stats.doc_ids_N[0])
    ids = real_store.tokenizer(articles[first], add_special_tokens=False)["input_ids"]
    assert stats.tokens_N[0] == min(len(ids), 63)
    assert list(rep.summary.index) == ["trained", "shuffled", "random", "trained - shuffled", "trained - random"]
    assert list(rep.table.columns) == list(COLUMNS) and set(rep.table["domain"]) <= set(TOPIC_MAPPING)
    assert {"specialist_frac", "specialist_frac_alive", "topic_specialist_frac_alive"} <= set(rep.summary.columns)
