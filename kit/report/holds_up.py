"""The report's "Does it hold up?" section as (title, text, table) parts that both formats render: the margins over
both nulls, of all latents and of alive ones; the specialists that beat the token-identity null, per domain, with
the domain's register; the replication on the topic set; the register caveat.
"""
from __future__ import annotations

import pandas as pd

from kit.interpret.analysis import holds_up_by_domain, register_caveat

MEASURES = ("specialist_frac", "specialist_frac_alive", "topic_specialist_frac", "topic_specialist_frac_alive")
"""The shares the section compares: `*_frac` of all latents, `*_frac_alive` of the latents that fire at all."""
MARGINS_TEXT = ("Share of all latents (_frac) and of alive latents (_frac_alive) that are specialists, and topic "
                "specialists (specialists that beat the token-identity null), for the trained transcoder, the "
                "shuffled-label null, the random-transcoder null, and trained minus each null.")
REPLICATION_SHARES_TEXT = ("The same shares on the topic set: the trained transcoder against both nulls there, of "
                           "all latents and of alive ones.")


def shares_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per share of `MEASURES` the summary has, one column per transcoder or margin."""
    columns = [m for m in MEASURES if m in summary.columns]
    return summary[columns].T.rename_axis("share").reset_index()


def survivors_sentence(interp) -> str:
    """How many specialists beat the token-identity null, and what that means."""
    table = interp.specialization
    n_spec, n_topic = int((table["category"] == "specialist").sum()), int(table["topic_specialist"].sum())
    if n_spec and table.loc[table["category"] == "specialist", "identity_base"].isna().all():
        return f"The token-identity null was not computed for the {n_spec} specialists (no token ids were counted)."
    unit = "firing documents" if interp.config.level == "document" else "firing tokens"
    return (f"{n_topic} of {n_spec} specialists are topic specialists: their top domain holds significantly more "
            f"of their {unit} (Benjamini-Hochberg q < {interp.config.alpha:g} over the specialists) than the token "
            "types they fire on predict, were each type equally likely to fire in every domain. The others may "
            "follow words that occur mostly in one domain rather than its subject. Per domain, with the register of "
            "its text and the replication of its mapped topic (replicated: overlap with the topic's specialists on "
            "the topic set, against the expected overlap and its hypergeometric p):")


def replication_sentence(interp) -> str:
    """What the replication scored, or why there is none."""
    info = interp.replication_info
    if "skipped" in info or not info:
        return f"Not replicated: {info.get('skipped', 'no replication was saved')}."
    pairs = ", ".join(f"{d} → {t}" for d, t in info["mapping"].items())
    labels = ", ".join(f"{k} {v}" for k, v in info.get("documents_per_label", {}).items())
    return (f"The run's specialists on {info['documents']:,} documents of the {info['source']} ({labels}; labels: "
            f"{info['domain_field']}; one context each, {info['tokens']:,} scored tokens), for the pairs {pairs}: "
            "run_specialists for the domain; overlap: those that are specialists for the topic there; share: "
            "overlap / run_specialists; share_alive: overlap / drawn, the run specialists alive there; expected: "
            "the overlap were the topic's second_specialists any of the second_alive latents alive there, with "
            "its hypergeometric p (P(overlap ≥ observed)). Pairs whose domain or topic is absent are left out.")


def holds_up_parts(interp) -> list[tuple[str, str, pd.DataFrame | None]]:
    """The section's parts: (title, text, table or None)."""
    domains = interp.base_rates["domain"].tolist()
    both = pd.concat([interp.summary, interp.margins])
    parts = [("Margins over both nulls", MARGINS_TEXT, shares_frame(both)),
             ("Specialists that beat token identity", survivors_sentence(interp),
              holds_up_by_domain(interp.specialization, domains, interp.replication)),
             ("Replication on the topic set", replication_sentence(interp),
              interp.replication if len(interp.replication) else None)]
    if len(interp.replication_summary):
        parts.append(("Shares on the topic set", REPLICATION_SHARES_TEXT, shares_frame(interp.replication_summary)))
    return parts + [("Register", register_caveat(domains), None)]
