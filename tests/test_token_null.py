"""The token-identity null: a latent that fires on one word of a domain is explained by that word; one that fires on
many words, but only inside that domain's documents, is a topic specialist. Built from synthetic per-token data
through the public functions, and the expected counts against hand loops."""
import numpy as np
import pandas as pd
import pytest

from kit.config import SpecializationConfig
from kit.interpret.analysis import (DocumentStats, TokenTypes, holds_up_by_domain, identity_units, latent_table,
                                    register_caveat, specialization_from_stats)

RARE, SHARED_RARE = 100, 101


def corpus(seed=0, per_domain=60, doc_len=30):
    """Documents of A, B, C over common ids 0..49. Id 100 occurs (twice) only in 30 A documents, id 101 in 30 A
    and 4 B documents. Latent 0 fires on every 100, latent 1 on a fifth of all tokens of A documents whatever they
    are, latent 2 on 5% of all tokens, latent 3 on every 101, latent 4 on every 7 (an id of every domain)."""
    gen = np.random.default_rng(seed)
    n = 3 * per_domain
    tok_NT = gen.integers(0, 50, (n, doc_len))
    dom_N = np.arange(n) // per_domain
    tok_NT[gen.choice(per_domain, 30, replace=False)[:, None], [5, 17]] = RARE
    tok_NT[np.r_[gen.choice(per_domain, 30, replace=False), per_domain + np.arange(4)][:, None], [9]] = SHARED_RARE
    acts = np.zeros((n, doc_len, 5), dtype=np.float32)
    acts[..., 0] = (tok_NT == RARE) * 2.0
    acts[..., 1] = (dom_N[:, None] == 0) * (gen.random((n, doc_len)) < 0.2) * 1.5
    acts[..., 2] = (gen.random((n, doc_len)) < 0.05) * 1.0
    acts[..., 3] = (tok_NT == SHARED_RARE) * 1.0
    acts[..., 4] = (tok_NT == 7) * 1.0
    doc_M = np.repeat(np.arange(n), doc_len)
    return acts.reshape(-1, 5), doc_M, dom_N[doc_M], tok_NT.ravel()


@pytest.fixture(scope="module")
def result():
    acts, doc_M, dom_M, tok_M = corpus()
    return specialization_from_stats(DocumentStats.from_token_acts(acts, doc_M, dom_M, "ABC", token_M=tok_M))


def test_one_word_of_one_domain_is_explained_by_token_identity(result):
    table = result.tables["trained"]
    for latent in (0, 3):  # id 100 only in A; id 101 in A and a few B documents
        row = table.loc[latent]
        assert row["category"] == "specialist" and row["top_domain"] == "A", "a specialist by the document test"
        assert not row["topic_specialist"], f"latent {latent} is explained by the word it fires on"
        assert row["identity_base"] == pytest.approx(row["document_top_share"]) and row["identity_lift"] == \
            pytest.approx(1.0)
    assert np.isnan(table.loc[0, "identity_p"]), "token identity puts every firing in A: nothing left to test"
    assert table.loc[3, "identity_p"] > 0.5


def test_many_words_inside_one_domain_make_a_topic_specialist(result):
    row = result.tables["trained"].loc[1]
    assert row["category"] == "specialist" and row["top_domain"] == "A" and row["topic_specialist"]
    assert row["identity_q"] < 1e-10 and row["identity_base"] == pytest.approx(1 / 3, abs=0.05)
    assert row["identity_lift"] > 2.5


def test_only_specialists_are_tested_and_the_summary_counts_survivors(result):
    table = result.tables["trained"]
    assert table["topic_specialist"].tolist() == [False, True, False, False, False]
    assert table.loc[[2, 4], "category"].tolist() == ["generalist", "generalist"]
    assert table.loc[[2, 4], "identity_p"].isna().all(), "generalists get no identity test"
    row = result.summary.loc["trained"]
    assert (row["specialist_frac"], row["topic_specialist_frac"]) == (pytest.approx(3 / 5), pytest.approx(1 / 5))
    assert row["topic_specialist_frac_alive"] == pytest.approx(1 / 5)
    assert (row["specialists_A"], row["topic_specialists_A"], row["topic_specialists_B"]) == (3, 1, 0)
    assert result.summary.loc["shuffled", "topic_specialist_frac"] == 0.0
    assert result.margins.loc["trained - shuffled", "topic_specialist_frac_alive"] == pytest.approx(1 / 5)


def test_without_token_ids_nothing_is_called_a_topic_specialist():
    acts, doc_M, dom_M, _ = corpus()
    res = specialization_from_stats(DocumentStats.from_token_acts(acts, doc_M, dom_M, "ABC"))
    assert res.tables["trained"]["category"].tolist()[:2] == ["specialist", "specialist"]
    assert not res.tables["trained"]["topic_specialist"].any()
    assert np.isnan(res.summary.loc["trained", "topic_specialist_frac"])


def test_one_token_type_gives_the_document_base():
    """With a single vocabulary id the token-identity null is the analysis's own null (one rate p)."""
    acts, doc_M, dom_M, _ = corpus()
    keep = np.arange(len(doc_M)) % 30 < doc_M % 7 + 5  # documents of 5 to 11 tokens
    stats = DocumentStats.from_token_acts(acts[keep], doc_M[keep], dom_M[keep], "ABC", token_M=np.zeros(keep.sum()))
    expected = identity_units(stats.types, stats.domain_N, 3, np.arange(5))
    np.testing.assert_allclose(expected, stats.expected_firing_documents(), rtol=1e-9)


def test_identity_units_against_hand_loops():
    gen = np.random.default_rng(3)
    doc_M, tok_M = np.repeat(np.arange(12), 9), gen.integers(0, 6, 108)
    dom_N = np.arange(12) % 3
    acts = (gen.random((108, 4)) < 0.3) * gen.uniform(0.5, 1.0, (108, 4))
    types = TokenTypes.from_token_acts(acts, doc_M, tok_M, 12)
    n_v = np.bincount(tok_M, minlength=6)
    for latent in range(4):
        fire_v = np.bincount(tok_M, weights=acts[:, latent] > 0, minlength=6)
        rate_v = fire_v / n_v
        by_doc, by_token = np.zeros(3), np.zeros(3)
        for j in range(12):
            quiet = np.prod([1 - rate_v[t] for t in tok_M[doc_M == j]])
            by_doc[dom_N[j]] += 1 - quiet
        for t in range(6):
            for d in range(3):
                by_token[d] += fire_v[t] * np.sum((tok_M == t) & (dom_N[doc_M] == d)) / n_v[t]
        np.testing.assert_allclose(identity_units(types, dom_N, 3, [latent])[0], by_doc, rtol=1e-9)
        np.testing.assert_allclose(identity_units(types, dom_N, 3, [latent], level="token")[0], by_token, rtol=1e-9)
    assert types.fire_LV.toarray().tolist() == [np.bincount(tok_M, weights=acts[:, i] > 0, minlength=6).tolist()
                                                for i in range(4)]


def test_token_level_identity_test():
    acts, doc_M, dom_M, tok_M = corpus()
    stats = DocumentStats.from_token_acts(acts, doc_M, dom_M, "ABC", token_M=tok_M)
    table = latent_table(stats, SpecializationConfig(level="token"))
    assert table.loc[1, "topic_specialist"] and not table.loc[[0, 3], "topic_specialist"].any()


def test_holds_up_by_domain_and_register_caveat(result):
    replication = pd.DataFrame({"domain": ["A"], "topic": ["a-topic"], "overlap": [1], "expected": [0.2],
                                "p": [0.04]})
    out = holds_up_by_domain(result.tables["trained"], ["A", "B", "medicine"], replication)
    assert out["specialists"].tolist() == [3, 0, 0] and out["topic_specialists"].tolist() == [1, 0, 0]
    assert out.loc[0, "surviving_share"] == pytest.approx(1 / 3) and np.isnan(out.loc[1, "surviving_share"])
    assert out.loc[2, "register"] == "short health-news headlines" and out.loc[0, "replicated"] == 1
    text = register_caveat(["legal", "fiction", "unknown"])
    assert "legal: licence text" in text and "fiction: Early Modern English (Shakespeare)" in text
    assert "unknown" not in text and "No domain" in register_caveat(["unknown"])
