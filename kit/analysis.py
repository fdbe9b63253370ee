"""Does a latent specialize in one domain? Counted on labelled evaluation contexts and compared with two nulls.

Public API (the report and the widgets call these names):
- `ContextStats`, `ContextStats.from_token_acts`, `context_stats(transcoder, store, indices, batch_contexts=32)`
- `SpecializationConfig`, `latent_table(stats, config)`, `domain_profile(stats, what)`, `g_test`, `bh_adjust`
- `specialization_from_stats(stats, random_stats, config)` and `specialization_with_nulls(transcoder, store, indices,
  config)` -> `SpecializationResult` (per-latent tables for trained / shuffled / random, summary, margins);
  `random_transcoder(transcoder, seed)` builds the random null
- `strength_hierarchy(table)`, `hierarchy_sentence(h)`, `style_caveat(result)`

Definitions. A latent *fires* on a token when its activation is > 0. At level "token" a unit is a token it fired
on; at level "context" a unit is a context in which it fired at least once. With c_d units in domain d:
share_d = c_d / Σc; lift_d = share_d / base_d, base_d being domain d's share of all tokens (or contexts), so a big
domain does not look special (DATA.md, "Pitfalls"); entropy = H(share) / log(D): 0 is one domain, 1 an even
spread; the G-test compares c_d with Σc · base_d. The top domain holds most of the latent's units.
Firings inside one context are not independent (a latent fires on runs of tokens), so the token-level test
overstates significance; classification uses the context-level test by default, whose units are closer to
independent (contexts cut from one document still share it). D counts the domains present; entropy divides by
log of that. Shape suffixes: N contexts, L latents, D domains, M scored tokens.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from kit.evaluate import DENSE_RATE
from kit.transcoder import Transcoder

LEVELS = ("context", "token")
# Registers that differ from the other domains of the embedded corpus (DATA.md, "Pitfalls").
STYLE_DOMAINS = {"medicine": "short health-news headlines", "finance": "short financial headlines",
                 "conversation": "lowercase informal chat", "fiction": "Early Modern English (Shakespeare)"}


@dataclass(frozen=True)
class ContextStats:
    """Per-context firing counts and activation mass of every latent, with each context's domain."""

    count_NL: np.ndarray
    """Scored tokens of each context on which each latent fired (int32)."""
    mass_NL: np.ndarray
    """Sum of each latent's activations over each context's scored tokens (float32)."""
    max_NL: np.ndarray | None
    """Each latent's largest activation in each context (float32), or None."""
    tokens_N: np.ndarray
    """Scored tokens per context (BOS and padding are never scored)."""
    domain_N: np.ndarray
    """Domain code of each context: an index into `domain_names`."""
    domain_names: tuple[str, ...]
    """Domain names by code."""

    def __post_init__(self):
        n, n_latents = self.count_NL.shape
        shapes = [self.mass_NL.shape, (n, n_latents) if self.max_NL is None else self.max_NL.shape]
        if shapes != [(n, n_latents)] * 2 or self.tokens_N.shape != (n,) or self.domain_N.shape != (n,):
            raise ValueError(f"count_NL, mass_NL and max_NL must share one [N, L] shape and tokens_N, domain_N be "
                             f"[N]; got {self.count_NL.shape}, {shapes}, {self.tokens_N.shape}, {self.domain_N.shape}")
        if n and not 0 <= self.domain_N.min() <= self.domain_N.max() < len(self.domain_names):
            raise ValueError(f"domain codes must index domain_names ({len(self.domain_names)} names)")

    @classmethod
    def from_token_acts(cls, acts_ML, context_M, domain_N, domain_names) -> ContextStats:
        """Build from the activations `acts_ML` of scored tokens and the context index `context_M` of each."""
        context_M = torch.as_tensor(context_M, dtype=torch.long)
        count, mass, mx = (t.cpu().numpy() for t in _reduce(torch.as_tensor(acts_ML), context_M, len(domain_N)))
        tokens_N = np.bincount(np.asarray(context_M), minlength=len(domain_N))
        return cls(count, mass, mx, tokens_N, np.asarray(domain_N), tuple(domain_names))

    def with_domains(self, domain_N: np.ndarray) -> ContextStats:
        """The same counts with other domain labels (the shuffled-label null)."""
        return dataclasses.replace(self, domain_N=np.asarray(domain_N))

    def by_domain(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """`(units_LD, base_D)`: each latent's firing units per domain and each domain's share of all units."""
        fired_NL, size_N = (self.count_NL, self.tokens_N) if level == "token" else (self.count_NL > 0, 1)
        size_N = np.broadcast_to(size_N, self.domain_N.shape)
        rows = [self.domain_N == d for d in range(len(self.domain_names))]
        units_LD = np.stack([fired_NL[r].sum(0, dtype=np.int64) for r in rows], 1)
        size_D = np.array([size_N[r].sum() for r in rows], dtype=np.float64)
        return units_LD, size_D / size_D.sum()


def _reduce(acts_ML: torch.Tensor, context_M: torch.Tensor, n: int):
    """Per-context firing count, activation sum and max of every latent: `[n, L]` each."""
    acts = acts_ML.float()
    shape = (n, acts.shape[1])
    count = torch.zeros(shape, device=acts.device).index_add_(0, context_M, (acts > 0).float())
    mass = torch.zeros(shape, device=acts.device).index_add_(0, context_M, acts)
    index_ML = context_M[:, None].expand_as(acts)
    mx = torch.zeros(shape, device=acts.device).scatter_reduce_(0, index_ML, acts, "amax", include_self=True)
    return count.to(torch.int32), mass, mx


@torch.no_grad()
def _stats_for(transcoders: list, store, indices, batch_contexts: int) -> list[ContextStats]:
    """`ContextStats` of several transcoders on the same contexts, running the language model once."""
    indices = [int(i) for i in indices]
    if not indices or batch_contexts < 1:
        raise ValueError(f"need at least one context index and batch_contexts >= 1, got {len(indices)} and "
                         f"{batch_contexts}")
    parts = [[] for _ in transcoders]
    modes = [tc.training for tc in transcoders]
    for tc in transcoders:
        tc.eval()  # batchtopk uses its frozen threshold only in eval mode
    try:
        for start in range(0, len(indices), batch_contexts):
            chunk = indices[start:start + batch_contexts]
            x, _, mask = store.activations_for_contexts(chunk)
            ctx_M = torch.arange(len(chunk))[:, None].expand_as(mask)[mask]
            for tc, out in zip(transcoders, parts):
                dev = tc.W_dec.device
                acts = tc.encode(x[mask].to(dev, tc.W_dec.dtype))
                out.append([t.cpu().numpy() for t in _reduce(acts, ctx_M.to(dev), len(chunk))])
    finally:
        for tc, mode in zip(transcoders, modes):
            tc.train(mode)
    present = list(dict.fromkeys(d for d in store.domain_names if d in {store.contexts[i].domain for i in indices}))
    domain_N = np.array([present.index(store.contexts[i].domain) for i in indices])
    tokens_N = np.array([store.contexts[i].length - 1 for i in indices])  # all real tokens but BOS are scored
    return [ContextStats(*(np.concatenate(col) for col in zip(*p)), tokens_N, domain_N, tuple(present))
            for p in parts]


def context_stats(transcoder, store, indices, batch_contexts: int = 32) -> ContextStats:
    """Per-context statistics of `transcoder` on the store contexts `indices` (e.g. `store.holdout_indices`)."""
    return _stats_for([transcoder], store, indices, batch_contexts)[0]


@dataclass(frozen=True)
class SpecializationConfig:
    """Thresholds that sort latents into specialist, generalist, dead and dense."""

    level: str = "context"
    """Unit of the test, lift and share that classify: 'context' (default, see the module docstring) or 'token'."""
    alpha: float = 0.01
    """A specialist's Benjamini-Hochberg q-value must be below this."""
    min_lift: float = 2.0
    """A specialist's top domain holds at least this many times its base rate."""
    min_share: float = 0.5
    """A specialist's top domain holds at least this share of its firings."""
    min_firing_contexts: int = 5
    """A specialist fires in at least this many contexts: with fewer, the G-test's chi-square approximation is poor
    and no domain preference can be shown."""
    dense_rate: float = DENSE_RATE
    """A latent firing on more than this share of tokens is dense (DESIGN.md: 10%); dense wins over specialist."""
    seed: int = 0
    """Seed of the shuffled-label null and of the random transcoder."""
    batch_contexts: int = 32
    """Contexts per language-model pass in `specialization_with_nulls`."""

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if not (0 < self.alpha < 1 and 0 < self.min_share <= 1 and 0 < self.dense_rate <= 1 and self.min_lift > 0):
            raise ValueError(f"need 0 < alpha < 1, 0 < min_share <= 1, 0 < dense_rate <= 1 and min_lift > 0: {self}")
        if min(self.min_firing_contexts, self.seed) < 0 or self.batch_contexts < 1:
            raise ValueError(f"need min_firing_contexts >= 0, seed >= 0 and batch_contexts >= 1: {self}")


def bh_adjust(p_L) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values (untested latents) stay NaN and do not count as tests."""
    p = np.asarray(p_L, dtype=np.float64)
    q, ok = np.full_like(p, np.nan), ~np.isnan(p)
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * ok.sum() / np.arange(1, ok.sum() + 1)
    q_ok = np.empty_like(scaled)
    q_ok[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q[ok] = q_ok
    return q


def g_test(units_LD: np.ndarray, base_D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G statistic and p-value of each latent's units per domain against Σunits · base (NaN if it never fired).

    Domains with a zero base rate have no units and drop out; the test has (domains left - 1) degrees of freedom.
    """
    keep = base_D > 0
    obs_LD, base = units_LD[:, keep].astype(np.float64), base_D[keep] / base_D[keep].sum()
    alive = obs_LD.sum(1) > 0
    g, p = np.full(len(obs_LD), np.nan), np.full(len(obs_LD), np.nan)
    if alive.any() and keep.sum() > 1:
        exp_LD = obs_LD[alive].sum(1, keepdims=True) * base
        g[alive], p[alive] = sps.power_divergence(obs_LD[alive], exp_LD, axis=1, lambda_="log-likelihood")
    return g, p


def _level_columns(stats: ContextStats, level: str) -> dict:
    units_LD, base_D = stats.by_domain(level)
    total = units_LD.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_LD = units_LD / total
        ent = -np.nansum(share_LD * np.log(share_LD), 1) / np.log(max((base_D > 0).sum(), 2))
    top = units_LD.argmax(1)
    g, p = g_test(units_LD, base_D)
    share = share_LD[np.arange(len(top)), top]
    cols = {"top_domain": np.array(stats.domain_names, dtype=object)[top], "top_share": share,
            "lift": share / base_D[top], "entropy": np.where(total[:, 0] > 0, ent, np.nan), "g": g, "p": p,
            "q": bh_adjust(p)}
    cols["top_domain"] = np.where(total[:, 0] > 0, cols["top_domain"], None)
    return {f"{level}_{name}": value for name, value in cols.items()}


def latent_table(stats: ContextStats, config: SpecializationConfig = SpecializationConfig()) -> pd.DataFrame:
    """One row per latent: firing, strength, both levels' top domain, lift, entropy, G, p, q, and its category."""
    count_L, mass_L = stats.count_NL.sum(0, dtype=np.int64), stats.mass_NL.sum(0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = pd.DataFrame({"latent": np.arange(len(count_L)), "n_tokens": count_L,
                           "fire_rate": count_L / stats.tokens_N.sum(), "n_contexts": (stats.count_NL > 0).sum(0),
                           "mean_act": np.where(count_L > 0, mass_L / count_L, np.nan)})
    if stats.max_NL is not None:
        df["max_act"] = stats.max_NL.max(0)
    for level in LEVELS:
        df = df.assign(**_level_columns(stats, level))
    lv = config.level
    specialist = ((df[f"{lv}_q"] < config.alpha) & (df[f"{lv}_lift"] >= config.min_lift)
                  & (df[f"{lv}_top_share"] >= config.min_share) & (df["n_contexts"] >= config.min_firing_contexts))
    df["category"] = np.select([df["n_tokens"] == 0, df["fire_rate"] > config.dense_rate, specialist],
                               ["dead", "dense", "specialist"], "generalist")
    df["top_domain"] = df[f"{lv}_top_domain"]
    df["style_flag"] = (df["category"] == "specialist") & df["top_domain"].isin(list(STYLE_DOMAINS))
    return df


def domain_profile(stats: ContextStats, what: str = "rate") -> pd.DataFrame:
    """[L, D] table: 'rate' (firings per token of the domain), 'mass' (activation per token of the domain),
    'lift' (token-level) or 'context_lift'."""
    if what in ("lift", "context_lift"):
        units_LD, base_D = stats.by_domain("token" if what == "lift" else "context")
        with np.errstate(invalid="ignore", divide="ignore"):
            values = units_LD / units_LD.sum(1, keepdims=True) / base_D
    elif what in ("rate", "mass"):
        src = stats.count_NL if what == "rate" else stats.mass_NL
        rows = [stats.domain_N == d for d in range(len(stats.domain_names))]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.stack([src[r].sum(0, dtype=np.float64) / stats.tokens_N[r].sum() for r in rows], 1)
    else:
        raise ValueError(f"what must be 'rate', 'mass', 'lift' or 'context_lift', got {what!r}")
    return pd.DataFrame(values, columns=list(stats.domain_names)).rename_axis("latent")


@dataclass(frozen=True)
class SpecializationResult:
    """Per-latent tables of the trained transcoder and both nulls, and how far the trained one stands out."""

    config: SpecializationConfig
    """The thresholds used."""
    tables: dict
    """'trained', 'shuffled' (domain labels permuted across contexts), 'random' (a freshly initialised
    transcoder of the same shape; absent when not computed): `latent_table` frames."""
    summary: pd.DataFrame
    """One row per table: latents, dead/dense/specialist shares, median top-domain lift (of alive latents, and of
    those firing in at least `min_firing_contexts` contexts), specialists per domain."""
    margins: pd.DataFrame
    """Trained minus each null, column by column."""
    base_rates: pd.DataFrame
    """Tokens and contexts per domain, with their shares: the base rates that lift divides by."""
    stats: ContextStats
    """The trained transcoder's per-context statistics (for `domain_profile`)."""


def _summary_row(df: pd.DataFrame, names, config: SpecializationConfig) -> dict:
    alive, spec = df["category"] != "dead", df["category"] == "specialist"
    testable, lift = df["n_contexts"] >= max(config.min_firing_contexts, 1), df[f"{config.level}_lift"]
    row = {"n_latents": len(df), "alive": int(alive.sum()), "dead_frac": float((~alive).mean()),
           "dense_frac": float((df["category"] == "dense").mean()), "specialist_frac": float(spec.mean()),
           "specialist_frac_alive": float(spec[alive].mean()) if alive.any() else np.nan,
           "median_top_lift": float(lift[alive].median()),
           # a latent seen in one context has lift 1 / base by construction; the testable ones say more
           "n_testable": int(testable.sum()), "median_top_lift_testable": float(lift[testable].median())}
    return row | {f"specialists_{d}": int((df.loc[spec, "top_domain"] == d).sum()) for d in names}


def specialization_from_stats(stats: ContextStats, random_stats: ContextStats | None = None,
                              config: SpecializationConfig = SpecializationConfig()) -> SpecializationResult:
    """Classify the trained transcoder's latents (`stats`) and the same under both nulls."""
    if len(np.unique(stats.domain_N)) < 2:
        raise ValueError("specialization needs evaluation contexts from at least two domains; this set has "
                         f"{sorted({stats.domain_names[d] for d in stats.domain_N})} (set the store's domain_field)")
    perm = np.random.default_rng(config.seed).permutation(len(stats.domain_N))
    runs = {"trained": stats, "shuffled": stats.with_domains(stats.domain_N[perm]), "random": random_stats}
    tables = {name: latent_table(s, config) for name, s in runs.items() if s is not None}
    summary = pd.DataFrame.from_dict({n: _summary_row(t, stats.domain_names, config) for n, t in tables.items()},
                                     orient="index")
    margins = pd.DataFrame({f"trained - {n}": summary.loc["trained"] - summary.loc[n] for n in tables
                            if n != "trained"}).T
    tokens_D = np.bincount(stats.domain_N, weights=stats.tokens_N, minlength=len(stats.domain_names))
    contexts_D = np.bincount(stats.domain_N, minlength=len(stats.domain_names))
    base = pd.DataFrame({"domain": stats.domain_names, "tokens": tokens_D.astype(int), "contexts": contexts_D,
                         "token_share": tokens_D / tokens_D.sum(), "context_share": contexts_D / contexts_D.sum()})
    return SpecializationResult(config, tables, summary, margins, base, stats)


def random_transcoder(transcoder, seed: int) -> Transcoder:
    """A freshly initialised transcoder of the same config and device, drawn with `seed` (the random null).

    Most telling for topk: a fresh relu or jumprelu transcoder (b_enc = 0) fires on about half of all tokens, so
    nearly all its latents come out dense; a fresh batchtopk one has no threshold yet and picks per chunk."""
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG stream untouched
        torch.manual_seed(seed)
        return Transcoder(transcoder.cfg).to(transcoder.W_dec.device)


def specialization_with_nulls(transcoder, store, indices,
                              config: SpecializationConfig = SpecializationConfig()) -> SpecializationResult:
    """Specialization of `transcoder` on the store contexts `indices`, with the shuffled-label and random-transcoder
    nulls computed on the same contexts (the language model runs once for both transcoders)."""
    stats, random_stats = _stats_for([transcoder, random_transcoder(transcoder, config.seed)], store, indices,
                                     config.batch_contexts)
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
    """Say which specialists sit in domains whose register differs (DATA.md), so style may explain them."""
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
