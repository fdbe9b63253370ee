"""The one API that reads samples tables (`samples.parquet`, `TopKCollector.samples()`): select rows, summarise
latents, rank the strongest, pick the phase to show, measure top-k retention, and cut token windows.

"Strongest latent" means, everywhere in the kit, the latent with the largest activation among its top samples
of the chosen phase (`latent_summary(...)["max_activation"]`, ranked by `strongest`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


PHASES = ("training", "final", "heldout")
"""The phases of a samples table: collected while training; the frozen final weights over exactly the tokens
training consumed; the same weights over the held-out documents."""


def select(samples: pd.DataFrame, phase: str | None = None, kind: str | None = "top") -> pd.DataFrame:
    """The rows of one phase ('training', 'final', 'heldout'; None for all) and kind ('top', 'interval'; None for
    both); a table without the column keeps all its rows."""
    keep = np.ones(len(samples), dtype=bool)
    for column, value in (("phase", phase), ("kind", kind)):
        if value is not None and column in samples.columns:
            keep &= (samples[column] == value).to_numpy()
    return samples[keep]


def latent_summary(samples: pd.DataFrame, phase: str | None = "training") -> pd.DataFrame:
    """Per latent with top samples in `phase` (index, sorted): max and mean activation of those samples, and their
    count (n_samples). The strongest latent is the one with the largest max_activation of the chosen phase."""
    top = select(samples, phase, "top").groupby("latent")["activation"]
    return pd.DataFrame({"max_activation": top.max(), "mean_activation": top.mean(), "n_samples": top.size()})


def strongest(summary: pd.DataFrame, n: int | None = None) -> list[int]:
    """The `n` (default all) strongest latents of a `latent_summary` frame (index or `latent` column: latents),
    strongest first, ties to the lower id."""
    table = summary.set_index("latent") if "latent" in summary.columns else summary
    order = table.sort_index().sort_values("max_activation", ascending=False, kind="stable")
    return [int(i) for i in order.index[:n]]


def display_phase(samples: pd.DataFrame) -> str | None:
    """The phase shown by default: 'final' (the frozen final weights, which `context_acts` are also scored with),
    else 'training', else 'heldout'; None when the table has no phase column or no rows."""
    if "phase" not in samples.columns or samples.empty:
        return None
    present = set(samples["phase"].unique())
    return next((p for p in ("final", "training", "heldout") if p in present), sorted(present)[0])


def window_slices(global_ids, ctx_len: int, before: int, after: int):
    """`(context_index_N, start_N, stop_N)` numpy arrays: the token window [start, stop) around each global id,
    clipped to its own context and to [1, ctx_len) (position 0 is BOS)."""
    gid = np.asarray(global_ids.cpu() if isinstance(global_ids, torch.Tensor) else global_ids, dtype=np.int64)
    if ctx_len < 2 or before < 0 or after < 0:
        raise ValueError(f"need ctx_len >= 2, before >= 0 and after >= 0, got {ctx_len}, {before}, {after}")
    ctx, pos = np.divmod(gid, ctx_len)
    if gid.size and (gid.min() < 0 or (pos == 0).any()):
        raise ValueError("global ids must be >= 0 and not at position 0 (BOS is never collected)")
    return ctx, np.maximum(pos - before, 1), np.minimum(pos + after + 1, ctx_len)


def topk_retention(train_df: pd.DataFrame, final_df: pd.DataFrame,
                   key: str = "context_index") -> tuple[pd.Series, float]:
    """Share of each latent's in-training top contexts still among its final-pass top contexts (1.0: nothing
    drifted). Compare frames collected over the same pool: the final pass over the tokens training consumed.

    Contexts match on `key` (e.g. "context_index", or "doc_id" after provenance is joined). Rows of kind
    "interval" are ignored. Returns the per-latent share and the share over all (latent, context) pairs.
    """
    pairs = []
    for name, df in (("train_df", train_df), ("final_df", final_df)):
        if missing := {"latent", key} - set(df.columns):
            raise ValueError(f"{name} lacks columns {sorted(missing)}; pass collector.samples() frames and a key "
                             f"column they both have")
        pairs.append(select(df, kind="top")[["latent", key]].drop_duplicates())
    both = pairs[0].merge(pairs[1], on=["latent", key], how="left", indicator=True)
    kept = both["_merge"] == "both"
    per_latent = kept.groupby(both["latent"]).mean().rename("topk_retention")
    return per_latent, float(kept.mean()) if len(kept) else float("nan")


def entries_frame(l_N, rank_N, v_N, gid_N, steps_N, kind: str, bin_N, ctx_len: int) -> pd.DataFrame:
    """A samples table from held entries: one row per (latent, rank) with its value, ids and step."""
    gid = gid_N.cpu().numpy()
    return pd.DataFrame({"latent": l_N.cpu().numpy(), "rank": rank_N.cpu().numpy(),
                         "activation": v_N.cpu().numpy(), "global_id": gid, "context_index": gid // ctx_len,
                         "position": gid % ctx_len, "step": steps_N.cpu().numpy(), "kind": kind,
                         "interval": bin_N.cpu().numpy()})
