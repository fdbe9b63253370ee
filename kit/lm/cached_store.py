"""CachedActivationsStore: the activation store, reading its refills from a cache folder instead of the model.

It is a `TranscoderActivationsStore` whose `_refill_acts(r)` reads shard (rank, r): the stream (contexts, refills,
chunks, the shuffle) is rebuilt from the manifest's source with the tokenizer alone, so batches, resumes,
`consumed()` and every provenance method are the live store's, bit for bit when the storage dtype is the store's.
Each shard's stored layout is checked against the rebuilt stream (a changed text source is refused). At most
`mix_refills` refills are resident, read from the memory-mapped safetensors file when a chunk first needs them.
`activations_for_contexts` reads the trained tokens of cached training contexts from the shards too (the values
training saw; zeros on BOS and padding, which no sample window shows), so the final pass needs no model. The language
model is loaded only when something runs it (held-out contexts, uncached ones, `model`, `nn`: evaluation), with one
printed line; training from the cache never loads it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kit.config import RunConfig, StoreConfig
from kit.lm.access import as_nnsight
from kit.lm.cache import (LAYOUT_FIELDS, VALUE_FIELDS, check_shards, check_world, differences, identity,
                          load_tokenizer, read_manifest, tokenizer_hash)
from kit.lm.hooks import HookPoints
from kit.lm.store import TranscoderActivationsStore
from kit.lm.stream import ContextStream


class CachedActivationsStore(TranscoderActivationsStore):
    """The store of the cache in `path` (written by `python -m kit cache`), for rank `shard[0]` of `shard[1]`.

    `config` (or StoreConfig fields as options) may change what the layout does not depend on: `batch_size`,
    `lm_batch`, and `dtype` (batches are cast to it). `model` and `tokenizer` reuse ones already in memory."""

    def __init__(self, path, config: StoreConfig | None = None, shard: tuple[int, int] = (0, 1),
                 device: str = "cpu", model=None, tokenizer=None, **options):
        self.path = Path(path)
        self.manifest = m = read_manifest(self.path)
        check_world(self.path, m, shard[1])
        config = self._reader_config(config, options)
        tokenizer = tokenizer or load_tokenizer(m["model"])
        if tokenizer_hash(tokenizer) != m["tokenizer"]["sha256"]:
            raise ValueError(f"the tokenizer differs from the one cache {self.path} was written with (vocabulary "
                             f"hash {m['tokenizer']['sha256'][:12]}...): use {m['tokenizer']['name']!r}'s tokenizer")
        check_shards(self.path, m, shard[0])
        self._model, self._device = model, str(device)
        self._shards = {e["refill"]: e for e in m["shards"] if e["rank"] == shard[0]}
        self._rows: dict[int, tuple[int, int]] | None = None  # see _context_rows
        self._open_stream(ContextStream(m["source"], tokenizer, config, shard), tokenizer, m["layer"])

    def _reader_config(self, config: StoreConfig | None, options: dict) -> StoreConfig:
        """The manifest's store settings, with the reader's free fields; layout or value fields that differ are
        refused by name."""
        m = self.manifest
        written = {**m["store"], "dtype": m["dtype"], "lm_batch": m["lm_batch"]}
        config = config or StoreConfig(**{**written, **options})
        diff = differences(m["store"], {f: getattr(config, f) for f in LAYOUT_FIELDS + VALUE_FIELDS},
                           prefix="store.")
        if diff:
            raise ValueError(f"cache {self.path} was written with other store settings ({'; '.join(diff)}): read it "
                             "with the cache's settings, or write a cache with these")
        return config

    # ---- what the language model would give --------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.manifest["d_in"]

    @property
    def d_out(self) -> int:
        return self.manifest["d_out"]

    @property
    def device(self) -> str:
        """Where batches go, and where the model loads if something runs it."""
        return self._device

    @property
    def hooks(self) -> HookPoints:
        """The hook points the cache was read at (from the manifest; no model needed)."""
        return HookPoints(**self.manifest["hooks"])

    @property
    def model(self):
        """The language model, loaded on first use (held-out text: evaluation, the held-out top-k); training and the
        final pass over training contexts never need it."""
        if self._model is None:
            from kit.lm.models import load_model
            m = self.manifest
            print(f"loading the language model {m['model']} ({m['model_dtype']}) on {self._device}: the cache holds "
                  "training activations only, evaluation runs the model on held-out text", flush=True)
            self._model, _ = load_model(m["model"], dtype=getattr(torch, m["model_dtype"]), device=self._device)
        return self._model

    @property
    def nn(self):
        return as_nnsight(self.model)

    @property
    def model_loaded(self) -> bool:
        """Whether the language model is in memory (it never is while training from the cache)."""
        return self._model is not None

    # ---- activations from the shards ---------------------------------------------------------------------------
    def _refill_acts(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x_ND, y_ND)` of refill r, read from its shard and cast to the store's dtype."""
        if r not in self._acts:
            from safetensors import safe_open
            entry = self._shards.get(r)
            if entry is None:
                raise ValueError(f"cache {self.path} holds refills 0..{len(self._shards) - 1} of rank {self.rank} "
                                 f"({self.manifest['tokens_per_rank']:,} tokens per rank) and the store needs refill "
                                 f"{r}: write a cache with more --tokens")
            with safe_open(self.path / entry["file"], framework="pt") as f:
                layout = f.get_tensor("layout")
                if not torch.equal(layout, self.stream.layout(r)):
                    raise ValueError(f"cache {self.path}: {entry['file']} holds other tokens than the text source "
                                     f"{self.manifest['source']!r} gives for refill {r} now: the source changed "
                                     "since the cache was written; write the cache again")
                dtype = getattr(torch, self.config.dtype)
                # one sequential read per tensor: left memory-mapped, the chunks' shuffled gathers would fault
                # pages in at random
                self._acts[r] = tuple(_owned(f.get_tensor(k)).to(self._device, dtype) for k in ("x_in", "y_out"))
        return self._acts[r]

    @torch.inference_mode()
    def activations_for_contexts(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(x_NTD, y_NTD, mask_NT)` as the live store gives them on every trained token; a cached training context is
        read from its shard (only its own rows), any other context (held out, past the cache) runs the model."""
        indices = [int(i) for i in indices]
        _, mask = self.tokens_for_contexts(indices)
        where = self._context_rows()
        miss = [n for n, i in enumerate(indices) if i not in where]
        if len(miss) == len(indices):
            return super().activations_for_contexts(indices)
        dtype, (N, T) = getattr(torch, self.config.dtype), mask.shape
        x = torch.zeros(N, T, self.d_in, dtype=dtype, device=self._device)
        y = torch.zeros(N, T, self.d_out, dtype=dtype, device=self._device)
        if miss:
            x[miss], y[miss], _ = super().activations_for_contexts([indices[n] for n in miss])
        counts, by_refill = mask.sum(1).tolist(), {}
        for n, i in enumerate(indices):
            if i in where:
                by_refill.setdefault(where[i][0], []).append(n)
        from safetensors import safe_open
        for r, rows in by_refill.items():
            with safe_open(self.path / self._shards[r]["file"], framework="pt") as f:
                for out, name in ((x, "x_in"), (y, "y_out")):
                    part = f.get_slice(name)
                    for n in rows:
                        start = where[indices[n]][1]
                        out[n, mask[n]] = part[start:start + counts[n]].to(self._device, dtype)
        return x, y, mask

    def _context_rows(self) -> dict[int, tuple[int, int]]:
        """{training context index: (refill, first row of its trained tokens in that refill's shard)} over every
        cached refill of this rank (built once; a context a wrapped stream repeats keeps its first refill)."""
        if self._rows is None:
            self._rows = {}
            for r in sorted(self._shards):
                row = 0
                for i in self.stream.refill_contexts(r):
                    self._rows.setdefault(i, (r, row))
                    row += int(self.context_at(i).trained_mask().sum())
                if row != self._shards[r]["rows"]:
                    raise ValueError(f"cache {self.path}: {self._shards[r]['file']} holds {self._shards[r]['rows']:,} "
                                     f"rows and the text source gives {row:,} for refill {r}: write the cache again")
        return self._rows

    def resident_bytes(self) -> int:
        """Bytes of activations held now: the resident refills (at most mix_refills) and the current chunk."""
        held = [t for pair in self._acts.values() for t in pair] + list(self._buffer or ())
        return sum(t.numel() * t.element_size() for t in held)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """`t` in memory of its own (a copy when it still reads from the file's mapping)."""
    return t.clone(memory_format=torch.contiguous_format)


def open_cached_store(config: RunConfig, device: str = "cpu", shard: tuple[int, int] = (0, 1), model=None,
                      tokenizer=None) -> CachedActivationsStore:
    """The store of a run with `config.cache`, after refusing (one line, before the text is read) a cache of
    another model, layer, hook points, source or stream layout, one written by another world size, and one too
    short for `train.steps * store.batch_size` tokens per rank."""
    path = Path(config.cache)
    manifest = read_manifest(path)
    check_world(path, manifest, shard[1])
    tokenizer = tokenizer or load_tokenizer(config.model)
    diff = differences(manifest, identity(config, tokenizer))
    if diff:
        raise ValueError(f"cache {path} does not match this run: {'; '.join(diff)}; write a cache for this run "
                         "(`python -m kit cache` with the run's preset and --set options) or set these fields to "
                         "the cache's")
    need, have = config.train.steps * config.store.batch_size, manifest["tokens_per_rank"]
    if need > have:
        raise ValueError(f"this run needs train.steps x store.batch_size = {config.train.steps:,} x "
                         f"{config.store.batch_size:,} = {need:,} tokens per rank, but cache {path} holds {have:,} per "
                         f"rank: write a cache with `python -m kit cache ... --tokens {need * shard[1]}` (or more)")
    return CachedActivationsStore(path, config.store, shard, device, model, tokenizer)
