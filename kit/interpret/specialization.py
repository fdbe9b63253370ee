"""Sorting latents into dead, dense, specialist and generalist on labelled documents, against two nulls; which
specialists beat the token-identity null (topic specialists); per-domain profiles.

`kit.interpret.analysis` re-exports every public name here and explains the units, base rates and tests.
Shape suffixes: N documents, L latents, D domains, S specialists.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from kit.config import LEVELS, SpecializationConfig
from kit.interpret.token_null import identity_units
from kit.interpret.unit_stats import DocumentStats, bh_adjust, g_test, stats_for_transcoders
from kit.model.transcoder import Transcoder

PROFILES = ("rate", "mass", "document_share", "document_lift", "token_share", "token_lift")
REGISTERS = {"code": "Python source files", "math_science": "SymPy docstrings", "legal": "licence text",
             "medicine": "short health-news headlines", "finance": "short financial headlines",
             "conversation": "lowercase informal chat", "fiction": "Early Modern English (Shakespeare)",
             "politics": "State of the Union speeches", "news": "news articles", "encyclopedic": "Wikipedia articles"}
"""The register of each domain of the embedded corpus: they differ in style as much as in subject."""
# Registers other than running prose, so a split there may follow style (news and Wikipedia are the prose).
STYLE_DOMAINS = {d: r for d, r in REGISTERS.items() if d not in ("news", "encyclopedic")}
# Added to the seed of the random null: a run seeds its transcoder's initialisation with its store seed (0 by
# default, as SpecializationConfig.seed), and the null must not be that run's own starting point.
RANDOM_NULL_SEED_OFFSET = 0x9E3779B97F4A7C15


def domain_profile(stats: DocumentStats, what: str = "rate") -> pd.DataFrame:
    """[L, D] table: 'rate' (firings per scored token of the domain), 'mass' (activation per token of the domain),
    '<level>_share' (share of the latent's firing units; rows sum to 1) or '<level>_lift' (share / base)."""
    if what in ("rate", "mass"):
        src = stats.count_NL if what == "rate" else stats.mass_NL
        rows = [stats.domain_N == d for d in range(len(stats.domain_names))]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.stack([src[r].sum(0, dtype=np.float64) / stats.tokens_N[r].sum() for r in rows], 1)
    elif what in PROFILES:
        level, kind = what.split("_")
        units_LD, base_LD = stats.by_domain(level)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = units_LD / units_LD.sum(1, keepdims=True) / (1.0 if kind == "share" else base_LD)
    else:
        raise ValueError(f"what must be one of {PROFILES}, got {what!r}")
    return pd.DataFrame(values, columns=list(stats.domain_names)).rename_axis("latent")


def profile_table(stats: DocumentStats) -> pd.DataFrame:
    """Long frame, one row per (latent that fired, domain): `documents` it fired in there, their `share` of all
    its firing documents (sums to 1 per latent), document-level `lift`, and `rate` (firings per scored token)."""
    units_LD, _ = stats.by_domain("document")
    parts = {"documents": units_LD, "share": domain_profile(stats, "document_share").to_numpy(),
             "lift": domain_profile(stats, "document_lift").to_numpy(), "rate": domain_profile(stats).to_numpy()}
    fired = np.flatnonzero(units_LD.sum(1) > 0)
    latent, domain = np.repeat(fired, units_LD.shape[1]), np.tile(np.arange(units_LD.shape[1]), len(fired))
    return pd.DataFrame({"latent": latent, "domain": np.array(stats.domain_names, dtype=object)[domain]}
                        | {name: v[latent, domain] for name, v in parts.items()})


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
    """One row per latent: firing, strength, both levels' top domain, its share, base, lift, entropy, G, p, q, the
    latent's category, and for specialists the token-identity test (`identity_*`, `topic_specialist`)."""
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
    return df.assign(**_identity_columns(stats, df, config))


def _identity_columns(stats: DocumentStats, df: pd.DataFrame, config: SpecializationConfig) -> dict:
    """The specialists' token-identity test (`kit.interpret.token_null`) at the level that classifies: the share
    token identity predicts for the top domain (`identity_base`), the observed share over it, G-test, p and BH q
    over the specialists. NaN for other latents and when `stats` has no token types, where no latent counts as a
    topic specialist."""
    base, g, p = (np.full(len(df), np.nan) for _ in range(3))
    spec_S = np.flatnonzero(df["category"].to_numpy() == "specialist")
    if stats.types is not None and len(spec_S):
        units_SD = stats.by_domain(config.level)[0][spec_S]
        expected_SD = identity_units(stats.types, stats.domain_N, len(stats.domain_names), spec_S, config.level)
        with np.errstate(invalid="ignore", divide="ignore"):
            base_SD = expected_SD / expected_SD.sum(1, keepdims=True)
        g[spec_S], p[spec_S] = g_test(units_SD, base_SD)  # one domain predicted: no test (NaN), not a survivor
        base[spec_S] = base_SD[np.arange(len(spec_S)), units_SD.argmax(1)]
    q, lift = bh_adjust(p), df[f"{config.level}_top_share"].to_numpy() / base
    # the G-test is two-sided: a survivor's top domain must also hold more than token identity gives it
    return {"identity_base": base, "identity_lift": lift, "identity_g": g, "identity_p": p, "identity_q": q,
            "topic_specialist": (q < config.alpha) & (lift > 1)}


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
    """One row per table: latents, dead/dense/specialist/generalist/topic-specialist shares of all latents and of
    alive ones, median top-domain lift (of alive latents, and of those firing in at least `min_firing_documents`
    documents), specialists and topic specialists per domain (topic ones NaN where no token types were counted)."""
    margins: pd.DataFrame
    """Trained minus each null, column by column."""
    base_rates: pd.DataFrame
    """Documents and scored tokens per domain, with their shares (the document-level base of a latent lies between
    them, see the module docstring)."""
    stats: DocumentStats
    """The trained transcoder's per-document statistics (for `domain_profile`)."""


def _summary_row(df: pd.DataFrame, names, config: SpecializationConfig, identity: bool) -> dict:
    alive, topic = df["category"] != "dead", df["topic_specialist"]
    testable, lift = df["n_documents"] >= max(config.min_firing_documents, 1), df[f"{config.level}_lift"]
    row = {"n_latents": len(df), "alive": int(alive.sum()), "dead_frac": float((~alive).mean())}
    shares = {c: df["category"] == c for c in ("dense", "specialist", "generalist")}
    shares["topic_specialist"] = topic if identity else pd.Series(np.nan, index=df.index)  # NaN: not tested
    for category, hit in shares.items():
        row |= {f"{category}_frac": float(hit.mean()),
                f"{category}_frac_alive": float(hit[alive].mean()) if alive.any() else np.nan}
    row |= {"median_top_lift": float(lift[alive].median()),
            # a latent seen in one document has lift 1 / base by construction; the testable ones say more
            "n_testable": int(testable.sum()), "median_top_lift_testable": float(lift[testable].median())}
    by_domain = df.loc[df["category"] == "specialist", "top_domain"]
    row |= {f"specialists_{d}": int((by_domain == d).sum()) for d in names}
    return row | {f"topic_specialists_{d}": int((df.loc[topic, "top_domain"] == d).sum()) if identity else np.nan
                  for d in names}


def specialization_from_stats(stats: DocumentStats, random_stats: DocumentStats | None = None,
                              config: SpecializationConfig = SpecializationConfig()) -> SpecializationResult:
    """Classify the trained transcoder's latents (`stats`) and the same under both nulls."""
    if len(np.unique(stats.domain_N)) < 2:
        raise ValueError("specialization needs evaluation documents from at least two domains; this set has "
                         f"{sorted({stats.domain_names[d] for d in stats.domain_N})} (set the store's domain_field)")
    perm = np.random.default_rng(config.seed).permutation(len(stats.domain_N))
    runs = {"trained": stats, "shuffled": stats.with_domains(stats.domain_N[perm]), "random": random_stats}
    tables = {name: latent_table(s, config) for name, s in runs.items() if s is not None}
    summary = pd.DataFrame.from_dict({n: _summary_row(t, stats.domain_names, config, runs[n].types is not None)
                                      for n, t in tables.items()}, orient="index")
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
