"""Does a latent specialize in one domain? Counted on labelled held-out documents and compared with two nulls, the
token-identity null, and a second labelled source.

Public API (the report and the widgets call these names; most are defined in the modules named):
- `kit.interpret.unit_stats`: `DocumentStats`, `DocumentStats.from_token_acts`, `document_stats(transcoder, store,
  indices, batch_contexts=32)`, `g_test`, `bh_adjust`
- `kit.interpret.specialization`: `latent_table(stats, config)`, `specialization_from_stats(stats, random_stats,
  config)` and `specialization_with_nulls(transcoder, store, indices, config)` -> `SpecializationResult` (per-latent
  tables for trained / shuffled / random, summary, margins), `random_transcoder(transcoder, seed)`,
  `domain_profile(stats, what)`, `profile_table(stats)`, `REGISTERS`, `STYLE_DOMAINS`
- `kit.interpret.token_null`: `TokenTypes`, `identity_units`; `kit.interpret.replication`: `replicate`, `Replication`
- here: `strength_hierarchy(table)`, `hierarchy_sentence(h)`, `style_caveat(result)`, `register_caveat(domains)`,
  `holds_up_by_domain(table, domains, replication)`

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

Token identity. The same test with one rate per vocabulary id instead of one p (`kit.interpret.token_null`): a
specialist is a *topic specialist* when its top domain holds significantly more of its firing documents than the
token types it fires on predict. Replication: `replicate` classifies the same latents on the topic set, news in one
register, and asks whether the run's specialists for a domain are specialists for its topic there.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from kit.config import SpecializationConfig
from kit.interpret.replication import REPLICATION_CONTEXTS, Replication, overlap_table, replicate
from kit.interpret.specialization import (PROFILES, RANDOM_NULL_SEED_OFFSET, REGISTERS, STYLE_DOMAINS,
                                          SpecializationResult, domain_profile, latent_table, profile_table,
                                          random_transcoder, specialization_from_stats, specialization_with_nulls)
from kit.interpret.token_null import TokenTypes, identity_units
from kit.interpret.unit_stats import DocumentStats, bh_adjust, document_stats, g_test, stats_for_transcoders

__all__ = ["DocumentStats", "PROFILES", "RANDOM_NULL_SEED_OFFSET", "REGISTERS", "REPLICATION_CONTEXTS",
           "Replication", "STYLE_DOMAINS", "SpecializationConfig", "SpecializationResult", "TokenTypes", "bh_adjust",
           "document_stats", "domain_profile", "g_test", "hierarchy_sentence", "holds_up_by_domain",
           "identity_units", "latent_table", "overlap_table", "profile_table", "random_transcoder", "register_caveat",
           "replicate", "specialization_from_stats", "specialization_with_nulls", "stats_for_transcoders",
           "strength_hierarchy", "style_caveat"]


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


def register_caveat(domains) -> str:
    """Name the register of each of `domains` that the embedded corpus knows: a split between them may follow style."""
    known = [f"{d}: {REGISTERS[d]}" for d in domains if d in REGISTERS]
    if not known:
        return "No domain of this evaluation set has a known register; topic and register may still co-vary."
    return ("Register caveat: these domains differ in register as well as in subject (" + "; ".join(known) + "), so "
            "a specialist may detect the register rather than the topic. The token-identity null drops the "
            "specialists that the words they fire on explain; the topic set (news in one register) tests whether "
            "the others carry over to the same subject in another register.")


def holds_up_by_domain(table: pd.DataFrame, domains, replication: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per domain: its register, specialists, topic specialists (those that beat the token-identity null) and
    their share; with a replication table (`Replication.table`), its topic there, overlap, expected and p."""
    spec = table[table["category"] == "specialist"]
    top, topic = spec["top_domain"].to_numpy(), spec["topic_specialist"].to_numpy(bool)
    out = pd.DataFrame({"domain": list(domains)})
    out["register"] = [REGISTERS.get(d, "") for d in out["domain"]]
    out["specialists"] = [int((top == d).sum()) for d in out["domain"]]
    out["topic_specialists"] = [int((topic & (top == d)).sum()) for d in out["domain"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["surviving_share"] = out["topic_specialists"] / out["specialists"].where(out["specialists"] > 0)
    if replication is None or not len(replication):
        return out
    columns = {"topic": "topic", "overlap": "replicated", "expected": "expected", "p": "replication_p"}
    out = out.merge(replication[["domain", *columns]].rename(columns=columns), on="domain", how="left")
    return out.fillna({"topic": ""})  # a domain without a mapped topic
