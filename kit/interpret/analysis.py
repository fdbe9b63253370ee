"""Does a latent specialize in one domain? Counted on labelled held-out documents and compared with two nulls.

Public API (the report and the widgets call these names):
- from `kit.interpret.unit_stats`: `DocumentStats`, `DocumentStats.from_token_acts`, `document_stats(transcoder, store,
  indices, batch_contexts=32)` (`ContextStats` and `context_stats` are their old names), `domain_profile(stats,
  what)`, `profile_table(stats)`, `g_test`, `bh_adjust`
- `SpecializationConfig`, `latent_table(stats, config)`
- `specialization_from_stats(stats, random_stats, config)` and `specialization_with_nulls(transcoder, store, indices,
  config)` -> `SpecializationResult` (per-latent tables for trained / shuffled / random, summary, margins);
  `random_transcoder(transcoder, seed)` builds the random null
- `strength_hierarchy(table)`, `hierarchy_sentence(h)`, `style_caveat(result)`

Units. A latent *fires* on a token when its activation is > 0. The unit that classifies is the document: a latent's
units in domain d are the held-out documents of d it fired in at least once, however many contexts each spans.
Its firing tokens are not independent (a latent fires on runs of tokens, and one document's tokens share its topic),
so counting tokens (level "token", kept for reference) or contexts cut from one document overstates significance;
the shuffled-label null likewise permutes domain labels across documents.

Base rates. A longer document is more likely to contain a firing. Under the null that a latent fires on each scored
token independently with its overall rate p, it fires in E_d = Σ_{documents of d} (1 - (1 - p)^n_doc) documents of
domain d, so base_d = E_d / ΣE is the share of its firing documents that domain d should hold: each domain's token
share for rare latents (p·n << 1), its document share for common ones. With c_d firing documents in d:
share_d = c_d / Σc, lift_d = share_d / base_d, and the G-test compares c_d with Σc · base_d (D - 1 degrees of
freedom). It tests where the firings fall, not how many there are: a bursty latent fires in fewer documents than E
predicts, in every domain alike. entropy = H(share) / log(D): 0 is one domain, 1 an even spread. At level "token"
units are firing tokens and base_d is domain d's share of all scored tokens. The top domain holds most of the
latent's units. D counts the domains present. Shape suffixes: N documents, L latents, D domains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from kit.model.transcoder import Transcoder
from kit.config import LEVELS, SpecializationConfig
from kit.interpret.unit_stats import (DocumentStats, bh_adjust, document_stats, domain_profile, g_test,  # noqa: F401
                                      profile_table, stats_for_transcoders)  # domain_profile, profile_table: public here

ContextStats, context_stats = DocumentStats, document_stats  # their names before documents became the unit
# Registers that differ from the other domains of the embedded corpus, so a split there may follow style.
STYLE_DOMAINS = {"medicine": "short health-news headlines", "finance": "short financial headlines",
                 "conversation": "lowercase informal chat", "fiction": "Early Modern English (Shakespeare)"}
# Added to the seed of the random null: a run seeds its transcoder's initialisation with its store seed (0 by
# default, as SpecializationConfig.seed), and the null must not be that run's own starting point.
RANDOM_NULL_SEED_OFFSET = 0x9E3779B97F4A7C15


def _level_columns(stats: DocumentStats, level: str) -> dict:
    units_LD, base_LD = stats.by_domain(level)
    base_LD = np.broadcast_to(base_LD, units_LD.shape)
    total_L = units_LD.sum(1)
    n_domains = max(int((np.bincount(stats.domain_N) > 0).sum()), 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_LD = units_LD / total_L[:, None]
        ent = -np.nansum(share_LD * np.log(share_LD), 1) / np.log(n_domains) + 0.0  # + 0.0 turns -0.0 into 0.0
    top, rows, fired = units_LD.argmax(1), np.arange(len(units_LD)), total_L > 0
    g, p = g_test(units_LD, base_LD)
    share, base = share_LD[rows, top], base_LD[rows, top]
    cols = {"top_domain": np.where(fired, np.array(stats.domain_names, dtype=object)[top], None),
            "top_share": share, "top_base": base, "lift": share / base, "entropy": np.where(fired, ent, np.nan),
            "g": g, "p": p, "q": bh_adjust(p)}
    return {f"{level}_{name}": value for name, value in cols.items()}


def latent_table(stats: DocumentStats, config: SpecializationConfig = SpecializationConfig()) -> pd.DataFrame:
    """One row per latent: firing, strength, both levels' top domain, its share, base, lift, entropy, G, p, q, and
    the latent's category."""
    count_L, mass_L = stats.count_NL.sum(0, dtype=np.int64), stats.mass_NL.sum(0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = pd.DataFrame({"latent": np.arange(len(count_L)), "n_tokens": count_L,
                           "fire_rate": count_L / stats.tokens_N.sum(), "n_documents": (stats.count_NL > 0).sum(0),
                           "mean_act": np.where(count_L > 0, mass_L / count_L, np.nan)})
    if stats.max_NL is not None:
        df["max_act"] = stats.max_NL.max(0)
    for level in LEVELS:
        df = df.assign(**_level_columns(stats, level))
    lv = config.level
    specialist = ((df[f"{lv}_q"] < config.alpha) & (df[f"{lv}_lift"] >= config.min_lift)
                  & (df[f"{lv}_top_share"] >= config.min_share) & (df["n_documents"] >= config.min_firing_documents))
    df["category"] = np.select([df["n_tokens"] == 0, df["fire_rate"] > config.dense_rate, specialist],
                               ["dead", "dense", "specialist"], "generalist")
    df["top_domain"] = df[f"{lv}_top_domain"]
    df["style_flag"] = (df["category"] == "specialist") & df["top_domain"].isin(list(STYLE_DOMAINS))
    return df


@dataclass(frozen=True)
class SpecializationResult:
    """Per-latent tables of the trained transcoder and both nulls, and how far the trained one stands out."""

    config: SpecializationConfig
    """The thresholds used."""
    tables: dict
    """'trained', 'shuffled' (domain labels permuted across documents), 'random' (a freshly initialised
    transcoder of the same shape, not the run's own initialisation; absent when not computed): `latent_table`
    frames."""
    summary: pd.DataFrame
    """One row per table: latents, dead/dense/specialist/generalist shares of all latents and of alive ones, median
    top-domain lift (of alive latents, and of those firing in at least `min_firing_documents` documents),
    specialists per domain."""
    margins: pd.DataFrame
    """Trained minus each null, column by column."""
    base_rates: pd.DataFrame
    """Documents and scored tokens per domain, with their shares (the document-level base of a latent lies between
    them, see the module docstring)."""
    stats: DocumentStats
    """The trained transcoder's per-document statistics (for `domain_profile`)."""


def _summary_row(df: pd.DataFrame, names, config: SpecializationConfig) -> dict:
    alive, spec = df["category"] != "dead", df["category"] == "specialist"
    testable, lift = df["n_documents"] >= max(config.min_firing_documents, 1), df[f"{config.level}_lift"]
    row = {"n_latents": len(df), "alive": int(alive.sum()), "dead_frac": float((~alive).mean())}
    for category in ("dense", "specialist", "generalist"):
        hit = df["category"] == category
        row |= {f"{category}_frac": float(hit.mean()),
                f"{category}_frac_alive": float(hit[alive].mean()) if alive.any() else np.nan}
    row |= {"median_top_lift": float(lift[alive].median()),
            # a latent seen in one document has lift 1 / base by construction; the testable ones say more
            "n_testable": int(testable.sum()), "median_top_lift_testable": float(lift[testable].median())}
    return row | {f"specialists_{d}": int((df.loc[spec, "top_domain"] == d).sum()) for d in names}


def specialization_from_stats(stats: DocumentStats, random_stats: DocumentStats | None = None,
                              config: SpecializationConfig = SpecializationConfig()) -> SpecializationResult:
    """Classify the trained transcoder's latents (`stats`) and the same under both nulls."""
    if len(np.unique(stats.domain_N)) < 2:
        raise ValueError("specialization needs evaluation documents from at least two domains; this set has "
                         f"{sorted({stats.domain_names[d] for d in stats.domain_N})} (set the store's domain_field)")
    perm = np.random.default_rng(config.seed).permutation(len(stats.domain_N))
    runs = {"trained": stats, "shuffled": stats.with_domains(stats.domain_N[perm]), "random": random_stats}
    tables = {name: latent_table(s, config) for name, s in runs.items() if s is not None}
    summary = pd.DataFrame.from_dict({n: _summary_row(t, stats.domain_names, config) for n, t in tables.items()},
                                     orient="index")
    margins = pd.DataFrame({f"trained - {n}": summary.loc["trained"] - summary.loc[n] for n in tables
                            if n != "trained"}).T
    tokens_D = np.bincount(stats.domain_N, weights=stats.tokens_N, minlength=len(stats.domain_names))
    docs_D = np.bincount(stats.domain_N, minlength=len(stats.domain_names))
    base = pd.DataFrame({"domain": stats.domain_names, "documents": docs_D, "tokens": tokens_D.astype(int),
                         "document_share": docs_D / docs_D.sum(), "token_share": tokens_D / tokens_D.sum()})
    return SpecializationResult(config, tables, summary, margins, base, stats)


def random_transcoder(transcoder, seed: int) -> Transcoder:
    """A freshly initialised transcoder of the same config and device, drawn from `seed` + RANDOM_NULL_SEED_OFFSET
    (the random null; not the weights the run started from).

    Most telling for topk: a fresh relu or jumprelu transcoder (b_enc = 0) fires on about half of all tokens, so
    nearly all its latents come out dense; a fresh batchtopk one has no threshold yet and picks per chunk."""
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG stream untouched
        torch.manual_seed((seed + RANDOM_NULL_SEED_OFFSET) % 2 ** 64)
        return Transcoder(transcoder.cfg).to(transcoder.W_dec.device)


def specialization_with_nulls(transcoder, store, indices,
                              config: SpecializationConfig = SpecializationConfig()) -> SpecializationResult:
    """Specialization of `transcoder` on the documents of the store contexts `indices`, with the shuffled-label and
    random-transcoder nulls computed on the same documents (the language model runs once for both transcoders)."""
    stats, random_stats = stats_for_transcoders([transcoder, random_transcoder(transcoder, config.seed)], store,
                                                indices, config.batch_contexts)
    return specialization_from_stats(stats, random_stats, config)


def strength_hierarchy(table: pd.DataFrame) -> dict:
    """Do specialists fire more strongly than generalists? Compares `mean_act` (mean activation when firing).

    Cliff's delta = P(s > g) - P(s < g) over specialist/generalist pairs, from the Mann-Whitney U of the
    specialists (delta = 2U / (n_s n_g) - 1); Cohen's d uses the pooled standard deviation (ddof 1). Activations
    compare across latents only when their decoder rows share one norm (unit rows, as the trainer keeps them).
    """
    s = table.loc[table["category"] == "specialist", "mean_act"].dropna().to_numpy(np.float64)
    g = table.loc[table["category"] == "generalist", "mean_act"].dropna().to_numpy(np.float64)
    out = {"n_specialist": len(s), "n_generalist": len(g), "median_specialist": np.median(s) if len(s) else np.nan,
           "median_generalist": np.median(g) if len(g) else np.nan, "cliffs_delta": np.nan, "cohens_d": np.nan,
           "mannwhitney_u": np.nan, "p_value": np.nan}
    if min(len(s), len(g)) < 2:
        return out
    u, p = sps.mannwhitneyu(s, g, alternative="two-sided")
    pooled = np.sqrt(((len(s) - 1) * s.var(ddof=1) + (len(g) - 1) * g.var(ddof=1)) / (len(s) + len(g) - 2))
    return out | {"cliffs_delta": 2 * u / (len(s) * len(g)) - 1, "mannwhitney_u": float(u), "p_value": float(p),
                  "cohens_d": (s.mean() - g.mean()) / pooled if pooled > 0 else np.nan}


def _magnitude(delta: float) -> str:
    # Romano et al. (2006) thresholds for |Cliff's delta|: 0.147, 0.33, 0.474.
    return next(name for cut, name in ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"), (np.inf, "large"))
                if abs(delta) < cut)


def hierarchy_sentence(h: dict, alpha: float = 0.05) -> str:
    """One honest sentence about `strength_hierarchy(...)`'s numbers."""
    ns, ng = h["n_specialist"], h["n_generalist"]
    if min(ns, ng) < 2:
        return f"Too few latents to compare activation strength ({ns} specialists, {ng} generalists; need 2 each)."
    head = (f"median activation when firing {h['median_specialist']:.3g} for {ns} specialists vs "
            f"{h['median_generalist']:.3g} for {ng} generalists (Cliff's delta {h['cliffs_delta']:+.2f}, "
            f"{_magnitude(h['cliffs_delta'])}; Mann-Whitney p = {h['p_value']:.2g})")
    if h["p_value"] >= alpha:
        return f"No detectable difference in activation strength between specialists and generalists: {head}."
    side = "more" if h["cliffs_delta"] > 0 else "less"
    return f"Specialists fire {side} strongly than generalists: {head}."


def style_caveat(result: SpecializationResult, max_ids: int = 8) -> str:
    """Say which specialists sit in domains whose register differs from the rest, so style may explain them."""
    df = result.tables["trained"]
    n_spec = int((df["category"] == "specialist").sum())
    flagged = df[df["style_flag"]]
    present = [d for d in STYLE_DOMAINS if d in result.stats.domain_names]
    if not present:
        return "No domain of this evaluation set is known to differ in style; topic and register may still co-vary."
    if flagged.empty:
        return (f"None of the {n_spec} specialists sits in a domain with a distinct register "
                f"({', '.join(present)}); a domain split can still follow style rather than topic.")
    parts = []
    for dom, rows in flagged.groupby("top_domain", sort=True):
        ids = ", ".join(map(str, rows["latent"].head(max_ids))) + (" ..." if len(rows) > max_ids else "")
        parts.append(f"{dom} ({STYLE_DOMAINS[dom]}): {len(rows)} latents [{ids}]")
    return (f"Style caveat: {len(flagged)} of {n_spec} specialists belong to domains whose register differs from "
            f"the rest, so they may detect style rather than topic: {'; '.join(parts)}. Read their top contexts "
            "for topic words before calling them topic features.")
