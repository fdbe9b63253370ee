"""Specialization: a planted specialist is found and the nulls lose it; every statistic against a hand reference."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from kit.analysis import (ContextStats, SpecializationConfig, bh_adjust, context_stats, domain_profile, g_test,
                          hierarchy_sentence, latent_table, random_transcoder, specialization_from_stats,
                          specialization_with_nulls, strength_hierarchy, style_caveat)
from kit.transcoder import Transcoder, TranscoderConfig

NAMES = ("code", "medicine", "legal", "news")


def planted(seed=0, n=200, t=20):
    """Latent 0 fires only in 'legal' contexts; 1-3 fire uniformly (5% of tokens); 4 never; 5 on 60% of tokens."""
    gen = np.random.default_rng(seed)
    domain_N = np.arange(n) % len(NAMES)
    acts = np.zeros((n, t, 6), dtype=np.float32)
    acts[:, :, 1:4] = (gen.random((n, t, 3)) < 0.05) * gen.uniform(0.5, 1.5, (n, t, 3))
    acts[:, :, 5] = (gen.random((n, t)) < 0.6) * 0.3
    legal = domain_N == NAMES.index("legal")
    acts[legal, :, 0] = (gen.random((legal.sum(), t)) < 0.3) * gen.uniform(2, 3, (legal.sum(), t))
    return acts.reshape(n * t, 6), np.repeat(np.arange(n), t), domain_N


@pytest.fixture(scope="module")
def result():
    acts, ctx, dom = planted()
    return specialization_from_stats(ContextStats.from_token_acts(acts, ctx, dom, NAMES))


def test_from_token_acts_matches_loops():
    acts, ctx, dom = planted(seed=1, n=12, t=5)
    stats = ContextStats.from_token_acts(acts, ctx, dom, NAMES)
    for i in range(12):
        rows = acts[ctx == i]
        np.testing.assert_array_equal(stats.count_NL[i], (rows > 0).sum(0))
        np.testing.assert_allclose(stats.mass_NL[i], rows.sum(0), rtol=1e-6)
        np.testing.assert_allclose(stats.max_NL[i], rows.max(0))
    assert stats.tokens_N.tolist() == [5] * 12


def test_planted_specialist_is_found_and_the_shuffled_null_loses_it(result):
    table = result.tables["trained"]
    assert table["category"].tolist() == ["specialist", "generalist", "generalist", "generalist", "dead", "dense"]
    assert table.loc[0, "top_domain"] == "legal" and table.loc[0, "context_q"] < 1e-10
    shuffled = result.tables["shuffled"]
    assert shuffled.loc[0, "category"] == "generalist" and shuffled.loc[0, "context_lift"] < 2
    assert result.summary.loc["trained", "specialists_legal"] == 1 and result.summary.loc["trained", "n_testable"] == 5
    assert result.margins.loc["trained - shuffled", "specialist_frac"] == pytest.approx(1 / 6)
    assert "random" not in result.tables


def test_shuffle_is_seeded():
    acts, ctx, dom = planted()
    stats = ContextStats.from_token_acts(acts, ctx, dom, NAMES)
    a, b = (specialization_from_stats(stats, config=SpecializationConfig(seed=3)) for _ in range(2))
    pd.testing.assert_frame_equal(a.tables["shuffled"], b.tables["shuffled"])


def test_lift_share_entropy_against_hand_values():
    # Domains [a, a, a, b] with [10, 10, 10, 30] tokens: token base 0.5/0.5, context base 0.75/0.25.
    count = np.array([[2], [0], [0], [6]], dtype=np.int32)
    stats = ContextStats(count, count.astype(np.float32), None, np.array([10, 10, 10, 30]), np.array([0, 0, 0, 1]),
                         ("a", "b"))
    row = latent_table(stats).iloc[0]
    h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(2)
    assert (row["token_top_domain"], row["token_top_share"], row["token_lift"]) == ("b", 0.75, 1.5)
    assert row["token_entropy"] == pytest.approx(h)
    # One context in each domain: share 0.5/0.5, the first domain wins the tie, lift 0.5 / 0.75, entropy 1.
    assert (row["context_top_domain"], row["context_top_share"]) == ("a", 0.5)
    assert row["context_lift"] == pytest.approx(2 / 3) and row["context_entropy"] == pytest.approx(1.0)
    assert row["mean_act"] == 1.0 and row["fire_rate"] == pytest.approx(8 / 60)
    assert domain_profile(stats, "rate").iloc[0].tolist() == pytest.approx([2 / 30, 6 / 30])
    assert domain_profile(stats, "lift").iloc[0].tolist() == pytest.approx([0.5, 1.5])
    assert domain_profile(stats, "context_lift").iloc[0].tolist() == pytest.approx([2 / 3, 2.0])


def test_g_test_against_manual_scipy_and_formula(result):
    stats = result.stats
    fired = stats.count_NL[:, 0] > 0
    obs = np.array([fired[stats.domain_N == d].sum() for d in range(4)], dtype=float)
    exp = obs.sum() * np.bincount(stats.domain_N) / len(stats.domain_N)
    g, p = sps.power_divergence(obs, exp, lambda_="log-likelihood")
    row = result.tables["trained"].iloc[0]
    assert row["context_g"] == pytest.approx(g) and row["context_p"] == pytest.approx(p)
    nz = obs > 0
    assert g == pytest.approx(2 * (obs[nz] * np.log(obs[nz] / exp[nz])).sum())
    g_dead, p_dead = g_test(np.zeros((1, 4), dtype=int), np.full(4, 0.25))
    assert np.isnan(g_dead[0]) and np.isnan(p_dead[0])


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
    assert "Style caveat" not in text and "None of the 1 specialists" in text  # 'legal' has no distinct register
    acts, ctx, dom = planted()
    renamed = specialization_from_stats(ContextStats.from_token_acts(acts, ctx, dom, ("code", "x", "fiction", "y")))
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


@pytest.fixture(scope="module")
def real_store(embedded):
    from kit.store import TranscoderActivationsStore
    model, tok = embedded
    return TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, ctx_len=64, holdout_contexts=12,
                                      batch_size=64, refill_contexts=8, shuffle_contexts=16)


def test_context_stats_on_the_real_model_matches_a_dense_computation(real_store):
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=96, activation="topk", k=8))
    idx = real_store.holdout_indices
    stats = context_stats(tc, real_store, idx, batch_contexts=5)  # uneven chunks: 5 + 5 + 2
    x, _, mask = real_store.activations_for_contexts(idx)
    with torch.no_grad():
        acts_NTL = tc.encode(x.flatten(0, 1)).view(*mask.shape, -1) * mask[..., None]
    np.testing.assert_array_equal(stats.count_NL, (acts_NTL > 0).sum(1).numpy())
    np.testing.assert_allclose(stats.mass_NL, acts_NTL.sum(1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats.tokens_N, mask.sum(1).numpy())
    assert [stats.domain_names[d] for d in stats.domain_N] == [real_store.contexts[i].domain for i in idx]
    assert stats.count_NL.sum() == 8 * mask.sum()  # topk: exactly k latents fire on every scored token
    res = specialization_with_nulls(tc, real_store, idx, SpecializationConfig(min_firing_contexts=2))
    assert list(res.summary.index) == ["trained", "shuffled", "random"]
    assert res.base_rates["contexts"].sum() == 12
