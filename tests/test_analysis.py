"""Specialization: a planted specialist is found and the nulls lose it; documents, not contexts or tokens, are the
units; every statistic against a hand reference."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from kit.config import SpecializationConfig
from kit.interpret.analysis import (DocumentStats, bh_adjust, document_stats, domain_profile, g_test,
                                    hierarchy_sentence, latent_table, profile_table, random_transcoder,
                          specialization_from_stats, specialization_with_nulls, strength_hierarchy, style_caveat)
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig

NAMES = ("code", "medicine", "legal", "news")


def planted(seed=0, n=200, t=20):
    """n documents of t tokens. Latent 0 fires only in 'legal' documents; 1-3 fire uniformly (5% of tokens); 4
    never; 5 on 60% of tokens. Returns per-token activations, document ids and domain codes."""
    gen = np.random.default_rng(seed)
    domain_N = np.arange(n) % len(NAMES)
    acts = np.zeros((n, t, 6), dtype=np.float32)
    acts[:, :, 1:4] = (gen.random((n, t, 3)) < 0.05) * gen.uniform(0.5, 1.5, (n, t, 3))
    acts[:, :, 5] = (gen.random((n, t)) < 0.6) * 0.3
    legal = domain_N == NAMES.index("legal")
    acts[legal, :, 0] = (gen.random((legal.sum(), t)) < 0.3) * gen.uniform(2, 3, (legal.sum(), t))
    doc_M = np.repeat(np.arange(n), t)
    return acts.reshape(n * t, 6), doc_M, domain_N[doc_M]


def expected_by_loop(stats, latent):
    """Σ over each domain's documents of 1 - (1 - p)^n, one document at a time."""
    p = stats.count_NL[:, latent].sum() / stats.tokens_N.sum()
    out = np.zeros(len(stats.domain_names))
    for n, d in zip(stats.tokens_N, stats.domain_N):
        out[d] += 1 - (1 - p) ** n
    return out


@pytest.fixture(scope="module")
def result():
    return specialization_from_stats(DocumentStats.from_token_acts(*planted(), NAMES))


def test_from_token_acts_matches_loops():
    acts, doc, dom = planted(seed=1, n=12, t=5)
    doc_ids = 1000 - 7 * doc  # any integers; documents come out sorted by id
    stats = DocumentStats.from_token_acts(acts, doc_ids, dom, NAMES)
    assert stats.doc_ids_N.tolist() == sorted(set(doc_ids.tolist()))
    for i, doc_id in enumerate(stats.doc_ids_N):
        rows = acts[doc_ids == doc_id]
        np.testing.assert_array_equal(stats.count_NL[i], (rows > 0).sum(0))
        np.testing.assert_allclose(stats.mass_NL[i], rows.sum(0), rtol=1e-6)
        np.testing.assert_allclose(stats.max_NL[i], rows.max(0))
        assert stats.domain_N[i] == dom[doc_ids == doc_id][0]
    assert stats.tokens_N.tolist() == [5] * 12
    with pytest.raises(ValueError, match="one domain"):
        DocumentStats.from_token_acts(acts, doc_ids, np.arange(len(dom)) % 4, NAMES)


def test_planted_specialist_is_found_and_the_shuffled_null_loses_it(result):
    table = result.tables["trained"]
    assert table["category"].tolist() == ["specialist", "generalist", "generalist", "generalist", "dead", "dense"]
    assert table.loc[0, "top_domain"] == "legal" and table.loc[0, "document_q"] < 1e-10
    shuffled = result.tables["shuffled"]
    assert shuffled.loc[0, "category"] == "generalist" and shuffled.loc[0, "document_lift"] < 2
    assert result.summary.loc["trained", "specialists_legal"] == 1 and result.summary.loc["trained", "n_testable"] == 5
    assert result.margins.loc["trained - shuffled", "specialist_frac"] == pytest.approx(1 / 6)
    assert "random" not in result.tables


def test_summary_gives_shares_of_all_and_of_alive_latents(result):
    row = result.summary.loc["trained"]  # 6 latents, latent 4 dead: 1 specialist, 3 generalists, 1 dense
    assert (row["alive"], row["dead_frac"]) == (5, pytest.approx(1 / 6))
    for category, n in (("specialist", 1), ("generalist", 3), ("dense", 1)):
        assert row[f"{category}_frac"] == pytest.approx(n / 6) and row[f"{category}_frac_alive"] == pytest.approx(n / 5)
    assert result.margins.loc["trained - shuffled", "specialist_frac_alive"] == pytest.approx(1 / 5)


def long_document_corpus(seed=0, per_domain=60, doc_len=24, long_contexts=20):
    """60 documents in each of A, B, C, of 24 tokens, cut into contexts of 24; document 0 (A) spans 20 contexts.
    Latent 0 fires only inside document 0; latent 1 in 30 A documents; latent 2 everywhere (3% of tokens)."""
    gen = np.random.default_rng(seed)
    lens = np.full(3 * per_domain, doc_len)
    lens[0] = doc_len * long_contexts
    doc_M = np.repeat(np.arange(len(lens)), lens)
    ctx_M = doc_M * long_contexts + np.concatenate([np.arange(n) for n in lens]) // doc_len
    dom_M = doc_M // per_domain
    acts = np.zeros((len(doc_M), 3), dtype=np.float32)
    acts[doc_M == 0, 0] = (gen.random(lens[0]) < 0.3) * 2.0
    chosen = np.isin(doc_M, gen.choice(per_domain, 30, replace=False))
    acts[chosen, 1] = np.where(np.arange(chosen.sum()) % doc_len == 3, 1.5, 0.0)  # one firing per document
    acts[:, 2] = (gen.random(len(doc_M)) < 0.03) * 1.0
    return acts, doc_M, ctx_M, dom_M


def test_one_long_document_is_not_a_specialist_but_thirty_documents_are():
    acts, doc_M, ctx_M, dom_M = long_document_corpus()
    table = specialization_from_stats(DocumentStats.from_token_acts(acts, doc_M, dom_M, "ABC")).tables["trained"]
    assert table["category"].tolist() == ["generalist", "specialist", "generalist"]
    assert table.loc[0, "n_documents"] == 1 and table.loc[1, "n_documents"] == 30
    assert table.loc[1, "top_domain"] == "A" and table.loc[1, "document_q"] < 1e-6
    # Control: with contexts as the units (the old test), the one long document looked like 20 A contexts.
    by_context = latent_table(DocumentStats.from_token_acts(acts, ctx_M, dom_M, "ABC"))
    assert by_context.loc[0, "category"] == "specialist"


def test_base_rates_count_tokens_per_document():
    """A latent that fires on 2% of tokens in every domain fires in most long A documents and few short B ones:
    against the documents' share it would look like an A specialist, against the length-aware base it does not."""
    gen = np.random.default_rng(0)
    lens = np.r_[np.full(60, 200), np.full(60, 10)]
    doc_M = np.repeat(np.arange(120), lens)
    acts = (gen.random((len(doc_M), 1)) < 0.02).astype(np.float32)
    stats = DocumentStats.from_token_acts(acts, doc_M, doc_M // 60, "AB")
    row = latent_table(stats).iloc[0]
    assert row["category"] == "generalist" and row["document_p"] > 0.05
    assert 0.9 < row["document_lift"] < 1.1 and row["document_top_base"] > 0.8
    units_LD, _ = stats.by_domain("document")
    assert g_test(units_LD, np.array([0.5, 0.5]))[1][0] < 1e-6  # the naive base is fooled
    np.testing.assert_allclose(stats.expected_firing_documents()[0], expected_by_loop(stats, 0))


def test_shuffle_is_seeded():
    stats = DocumentStats.from_token_acts(*planted(), NAMES)
    a, b = (specialization_from_stats(stats, config=SpecializationConfig(seed=3)) for _ in range(2))
    pd.testing.assert_frame_equal(a.tables["shuffled"], b.tables["shuffled"])


def test_lift_share_entropy_against_hand_values():
    # Documents [a, a, a, b] with [10, 10, 10, 30] tokens: token base 0.5/0.5.
    count = np.array([[2], [0], [0], [6]], dtype=np.int32)
    stats = DocumentStats(count, count.astype(np.float32), None, np.array([10, 10, 10, 30]), np.array([0, 0, 0, 1]),
                          ("a", "b"))
    row = latent_table(stats).iloc[0]
    h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(2)
    assert (row["token_top_domain"], row["token_top_share"], row["token_lift"]) == ("b", 0.75, 1.5)
    assert row["token_entropy"] == pytest.approx(h)
    # One firing document in each domain: share 0.5/0.5, the first domain wins the tie, entropy 1. p = 8/60.
    p = 8 / 60
    expected = np.array([3 * (1 - (1 - p) ** 10), 1 - (1 - p) ** 30])
    base = expected / expected.sum()
    assert (row["document_top_domain"], row["document_top_share"]) == ("a", 0.5)
    assert row["document_top_base"] == pytest.approx(base[0]) and row["document_lift"] == pytest.approx(0.5 / base[0])
    assert row["document_entropy"] == pytest.approx(1.0) and row["n_documents"] == 2
    assert row["mean_act"] == 1.0 and row["fire_rate"] == pytest.approx(8 / 60)
    assert domain_profile(stats, "rate").iloc[0].tolist() == pytest.approx([2 / 30, 6 / 30])
    assert domain_profile(stats, "token_lift").iloc[0].tolist() == pytest.approx([0.5, 1.5])
    assert domain_profile(stats, "document_lift").iloc[0].tolist() == pytest.approx(0.5 / base)
    assert domain_profile(stats, "document_share").iloc[0].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="what must be one of"):
        domain_profile(stats, "lift")


def test_profile_table_shares_sum_to_one_per_latent(result):
    prof = profile_table(result.stats)
    assert sorted(prof["latent"].unique()) == [0, 1, 2, 3, 5]  # the dead latent has no row
    np.testing.assert_allclose(prof.groupby("latent")["share"].sum(), 1.0, atol=1e-6)
    legal = prof[(prof["latent"] == 0) & (prof["domain"] == "legal")].iloc[0]
    assert legal["share"] == 1.0 and legal["documents"] == 50 and legal["lift"] == pytest.approx(4.0)


def test_g_test_against_manual_scipy_and_formula(result):
    stats = result.stats
    fired = stats.count_NL[:, 1] > 0
    obs = np.array([fired[stats.domain_N == d].sum() for d in range(4)], dtype=float)
    expected = expected_by_loop(stats, 1)
    exp = obs.sum() * expected / expected.sum()
    g, p = sps.power_divergence(obs, exp, lambda_="log-likelihood")
    row = result.tables["trained"].iloc[1]
    assert row["document_g"] == pytest.approx(g) and row["document_p"] == pytest.approx(p)
    nz = obs > 0
    assert g == pytest.approx(2 * (obs[nz] * np.log(obs[nz] / exp[nz])).sum())
    g_dead, p_dead = g_test(np.zeros((1, 4), dtype=int), np.full(4, 0.25))
    assert np.isnan(g_dead[0]) and np.isnan(p_dead[0])
    # a domain with zero base drops out: one degree of freedom fewer
    g3, p3 = g_test(np.array([[5, 3, 0]]), np.array([[0.5, 0.5, 0.0]]))
    ref = sps.power_divergence([5, 3], [4, 4], lambda_="log-likelihood")
    assert (g3[0], p3[0]) == (pytest.approx(ref[0]), pytest.approx(ref[1]))


def brute_bh(p):
    ok = [i for i, v in enumerate(p) if not np.isnan(v)]
    m, ranked = len(ok), sorted(ok, key=lambda i: p[i])
    q = [np.nan] * len(p)
    for pos, i in enumerate(ranked):
        q[i] = min(1.0, min(p[j] * m / (k + 1) for k, j in enumerate(ranked) if k >= pos))
    return np.array(q)


def test_bh_against_brute_force_and_scipy():
    p = np.random.default_rng(0).random(40) ** 3
    p[[3, 7]] = p[5]  # ties
    np.testing.assert_allclose(bh_adjust(p), brute_bh(p))
    np.testing.assert_allclose(bh_adjust(p), sps.false_discovery_control(p))
    with_nan = p.copy()
    with_nan[[0, 9]] = np.nan
    np.testing.assert_allclose(bh_adjust(with_nan), brute_bh(with_nan))


def test_hierarchy_against_manual_pairs():
    table = pd.DataFrame({"category": ["specialist"] * 4 + ["generalist"] * 5 + ["dead"],
                          "mean_act": [3.0, 2.5, 4.0, 1.0, 1.0, 2.0, 1.5, 0.5, 2.5, np.nan]})
    h = strength_hierarchy(table)
    s, g = np.array([3.0, 2.5, 4.0, 1.0]), np.array([1.0, 2.0, 1.5, 0.5, 2.5])
    pairs = np.sign(s[:, None] - g[None, :])
    assert h["cliffs_delta"] == pytest.approx(pairs.mean())
    pooled = np.sqrt((3 * s.var(ddof=1) + 4 * g.var(ddof=1)) / 7)
    assert h["cohens_d"] == pytest.approx((s.mean() - g.mean()) / pooled)
    assert h["p_value"] == pytest.approx(sps.mannwhitneyu(s, g).pvalue)
    assert (h["n_specialist"], h["n_generalist"], h["median_specialist"]) == (4, 5, 2.75)
    assert hierarchy_sentence(h).startswith("No detectable difference")  # 4 vs 5 latents cannot reach p < 0.05
    assert hierarchy_sentence(h, alpha=0.5).startswith("Specialists fire more strongly")
    assert hierarchy_sentence(strength_hierarchy(table.iloc[3:])).startswith("Too few")


def test_style_caveat_flags_style_domains(result):
    text = style_caveat(result)
    assert "Style caveat" in text and "legal (licence text): 1 latents [0]" in text
    prose = specialization_from_stats(DocumentStats.from_token_acts(*planted(), ("code", "x", "news", "y")))
    assert "None of the 1 specialists" in style_caveat(prose)  # news is running prose: no distinct register
    renamed = specialization_from_stats(DocumentStats.from_token_acts(*planted(), ("code", "x", "fiction", "y")))
    text = style_caveat(renamed)
    assert "fiction (Early Modern English" in text and "1 latents [0]" in text
    assert renamed.tables["trained"]["style_flag"].tolist() == [True] + [False] * 5


def test_random_transcoder_is_seeded_and_leaves_global_rng_alone():
    tc = Transcoder(TranscoderConfig(d_in=8, d_out=8, d_latent=16, activation="topk", k=2))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, b = random_transcoder(tc, 1), random_transcoder(tc, 1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.W_enc, b.W_enc) and not torch.equal(a.W_enc, random_transcoder(tc, 2).W_enc)


def test_random_null_is_not_the_runs_initialisation():
    """A run seeds its transcoder with its store seed (0 by default), as SpecializationConfig.seed is."""
    cfg = TranscoderConfig(d_in=8, d_out=8, d_latent=16, activation="topk", k=2)
    torch.manual_seed(0)
    initial = Transcoder(cfg)
    null = random_transcoder(initial, SpecializationConfig().seed)
    assert not torch.equal(null.W_enc, initial.W_enc) and not torch.equal(null.W_dec, initial.W_dec)


@pytest.fixture(scope="module")
def real_store(embedded):
    from kit.lm.store import TranscoderActivationsStore
    model, tok = embedded
    return TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, ctx_len=64, holdout_contexts=12,
                                      batch_size=64, refill_contexts=8, shuffle_contexts=16)


def test_document_stats_on_the_real_model_matches_a_dense_computation(real_store):
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=96, activation="topk", k=8))
    idx = real_store.holdout_indices
    stats = document_stats(tc, real_store, idx, batch_contexts=5)  # uneven chunks: 5 + 5 + 2
    x, _, mask = real_store.activations_for_contexts(idx)
    prov = real_store.token_provenance(idx)
    with torch.no_grad():
        acts_ML = tc.encode(x[mask])
    m = mask.numpy()
    token_M = real_store.tokens_for_contexts(idx)[0].numpy()[m]
    dense = DocumentStats.from_token_acts(acts_ML, prov.doc_ids[m], prov.domains[m], real_store.domain_names,
                                          token_M=token_M)
    np.testing.assert_array_equal(stats.doc_ids_N, dense.doc_ids_N)
    np.testing.assert_array_equal(stats.count_NL, dense.count_NL)
    np.testing.assert_allclose(stats.mass_NL, dense.mass_NL, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.max_NL, dense.max_NL, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats.tokens_N, dense.tokens_N)
    assert [stats.domain_names[d] for d in stats.domain_N] == [dense.domain_names[d] for d in dense.domain_N]
    assert stats.tokens_N.sum() == mask.sum() and stats.count_NL.sum() == 8 * mask.sum()  # topk: k per token
    for name in ("count_NV", "fire_LV"):  # the token-identity counts, chunk by chunk and all at once
        chunked, whole = getattr(stats.types, name), getattr(dense.types, name)
        assert chunked.shape == whole.shape and (chunked != whole).nnz == 0, name
    assert stats.types.fire_LV.sum() == 8 * mask.sum() and stats.types.count_NV.sum() == mask.sum()
    res = specialization_with_nulls(tc, real_store, idx, SpecializationConfig(min_firing_documents=2))
    assert list(res.summary.index) == ["trained", "shuffled", "random"]
    assert res.base_rates["documents"].sum() == len(stats.doc_ids_N) and res.base_rates["tokens"].sum() == mask.sum()
