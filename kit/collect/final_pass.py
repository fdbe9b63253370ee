"""Turn collector states into `samples.parquet`: provenance, token windows and per-token window activations.

A shuffled training batch holds only some tokens of any context, so the per-token activations of a sample's
window are re-scored at the end with the **final** weights (column `context_acts`; `activation_final` is the
collected token's own re-scored value). `activation` keeps the value seen when the sample was collected.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kit.collect.collector import TopKCollector
from kit.collect.samples import latent_summary, window_slices


@torch.no_grad()
def _encode(transcoder, x_ND: torch.Tensor):
    """Collector input for one chunk: the sparse (idx, vals) pair for TopK, dense activations otherwise."""
    x_ND = x_ND.to(transcoder.W_dec.device, transcoder.W_dec.dtype)
    out = transcoder(x_ND)
    return (out.top_idx, out.top_vals) if out.top_idx is not None else out.acts


class InputCache:
    """Transcoder inputs of whole contexts kept from the final pass, so re-scoring the sample windows needs no
    second language-model pass; contexts past `max_bytes` are recomputed instead."""

    def __init__(self, store, max_bytes: float = 4e9):
        self.store, self.max_bytes, self.x, self.bytes = store, max_bytes, {}, 0

    def add(self, indices, x_NTD: torch.Tensor) -> None:
        for i, x in zip(indices, x_NTD):
            if self.bytes + x.numel() * x.element_size() > self.max_bytes:
                return
            self.x[int(i)] = x
            self.bytes += x.numel() * x.element_size()

    def get(self, indices) -> torch.Tensor:
        missing = [int(i) for i in indices if int(i) not in self.x]
        fresh = dict(zip(missing, self.store.activations_for_contexts(missing)[0])) if missing else {}
        return torch.stack([self.x[int(i)] if int(i) in self.x else fresh[int(i)] for i in indices])


def final_pass(transcoder, store, contexts: dict, config, step: int, progress: bool = True,
               cache: InputCache | None = None) -> TopKCollector:
    """Re-collect the top-k with frozen weights over `contexts` ({context index: [T] bool mask of the tokens to
    score, or None for all its trained tokens}, e.g. `store.consumed()`); fills `cache` when given."""
    return final_pass_many([transcoder], store, contexts, [config], step, progress, cache)[0]


@torch.no_grad()
def final_pass_many(transcoders, store, contexts: dict, configs, step: int, progress: bool = True,
                    cache: InputCache | None = None) -> list[TopKCollector]:
    """`final_pass` for several transcoders of one store (a sweep): the language model reads each context once,
    and every transcoder scores it; `configs` are their CollectorConfigs."""
    collectors = [TopKCollector(tc.cfg.d_latent, cfg, tc.W_dec.device) for tc, cfg in zip(transcoders, configs)]
    T, chunk, indices = store.config.ctx_len, store.config.lm_batch, sorted(contexts)
    for start in tqdm(range(0, len(indices), chunk), desc="final top-k pass", disable=not progress):
        idx = indices[start:start + chunk]
        x, _, mask = store.activations_for_contexts(idx)
        mask = mask & torch.as_tensor(np.stack([np.ones(T, dtype=bool) if contexts[i] is None else contexts[i]
                                                for i in idx]))
        if cache is not None:
            cache.add(idx, x)
        gids = (torch.as_tensor(idx)[:, None] * T + torch.arange(T)[None, :])[mask]
        for tc, collector in zip(transcoders, collectors):
            collector.update(_encode(tc, x[mask]), gids.to(tc.W_dec.device), step)
    return collectors


def samples_frame(collectors: dict[str, TopKCollector], transcoder, store, progress: bool = True,
                  cache: InputCache | None = None) -> pd.DataFrame:
    """One row per (latent, phase, kind, rank) with provenance and re-scored windows (see docs/run-folder.md).

    Under torchrun each rank gives the rows of the contexts it owns (`store.owns`); their union is every row."""
    frames = [c.samples().assign(phase=phase) for phase, c in collectors.items()]
    df = pd.concat(frames, ignore_index=True)
    df = df[[store.owns(int(c)) for c in df["context_index"]]].reset_index(drop=True) if len(df) else df
    if df.empty:
        return df
    cfg = next(iter(collectors.values())).config
    ctx, start, stop = window_slices(df["global_id"].to_numpy(), store.config.ctx_len, cfg.window_before,
                                     cfg.window_after)
    pos = df["position"].to_numpy()
    metas = [store.context_at(c) for c in ctx]
    segs = [m.segment_at(p) for m, p in zip(metas, pos)]
    start = np.maximum(start, [s.start for s in segs])  # a window never crosses into another document
    stop = np.minimum(stop, [s.stop for s in segs])
    acts = _window_acts(transcoder, cache or InputCache(store, 0), ctx, start, stop, df["latent"].to_numpy(),
                        store.config.lm_batch, progress)
    ids = [m.token_ids[s:e].tolist() for m, s, e in zip(metas, start, stop)]
    pieces = _token_strings(store.tokenizer, ids)
    return df.assign(
        doc_id=[s.doc_id for s in segs], doc_position=[s.doc_start + p - s.start for s, p in zip(segs, pos)],
        domain=[s.domain for s in segs], source=_sources(store, segs), context_ids=ids,
        context_tokens=[[pieces[t] for t in row] for row in ids], context_acts=acts, token_index=pos - start,
        activation_final=[a[i] for a, i in zip(acts, pos - start)])


@torch.no_grad()
def _window_acts(transcoder, cache: InputCache, ctx, start, stop, latent, chunk: int, progress) -> list[list[float]]:
    """This latent's activation on every window token, re-scored with the current (final) weights."""
    out: list = [None] * len(ctx)
    contexts = np.unique(ctx)
    width = int((stop - start).max())
    for i in tqdm(range(0, len(contexts), chunk), desc="re-scoring sample windows", disable=not progress):
        part = contexts[i:i + chunk]
        x = cache.get(part.tolist())
        n, T, d = x.shape
        acts = transcoder.encode(x.reshape(n * T, d).to(transcoder.W_dec)).reshape(n, T, -1).float().cpu()
        rows = np.nonzero(np.isin(ctx, part))[0]
        local = torch.as_tensor(np.searchsorted(part, ctx[rows]))
        pos = torch.as_tensor(start[rows])[:, None] + torch.arange(width)[None, :]
        grid = acts[local[:, None], pos.clamp_max(T - 1), torch.as_tensor(latent[rows])[:, None]]
        for r, vals, w in zip(rows, grid.tolist(), stop[rows] - start[rows]):
            out[r] = vals[:w]
    return out


def _token_strings(tokenizer, ids: list[list[int]]) -> dict[int, str]:
    """Each token decoded on its own, for display (the sentencepiece/BPE space marker becomes a space)."""
    unique = sorted({t for row in ids for t in row})
    return dict(zip(unique, tokenizer.batch_decode([[t] for t in unique])))


def _sources(store, segments) -> list[str]:
    """The corpus source of each sample's document when the store knows it, else the store's source name."""
    lookup = getattr(store, "doc_sources", None) or {}
    return [lookup.get(s.doc_id, store.source_name) for s in segments]


def latent_table(df: pd.DataFrame, retention_L: pd.Series, n_latents: int) -> pd.DataFrame:
    """Per latent: max and mean activation of its in-training top samples, sample count, top-k retention."""
    table = latent_summary(df, "training").reindex(pd.RangeIndex(n_latents, name="latent"))
    table["topk_retention"] = retention_L
    return table.fillna({"n_samples": 0}).astype({"n_samples": int}).reset_index()
