"""TranscoderActivationsStore: shuffled (MLP input, MLP output) pairs that remember which token they came from.

The stream: documents are read once, each is routed by a seeded hash of its id either to the held-out set
(whole documents, drawn at random, never trained on) or to training, and packed into BOS-first contexts
(`kit.corpus.packing`). Training context j belongs to rank j % world; a rank keeps only its own contexts and the
held-out ones. Context index space: held-out contexts are 0..H-1, training context j is H + j, and a token's
global id is `context_index * ctx_len + position`.

Mixing: each refill runs the model on `refill_contexts` contexts; every token of refill r is handed out with
chunk r + d, d drawn uniformly from 0..mix_refills-1 (the first chunk handed out is mix_refills-1), and each chunk
is shuffled. A batch therefore mixes the contexts of `mix_refills` refills, at most `mix_refills` refills are
resident, and the stream position is just (chunk, offset), so a resume rebuilds exactly the same buffer.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from kit.lm.access import as_nnsight, read_activations
from kit.lm.hooks import d_model, hook_points
from kit.corpus.packing import Context, padding_share, stack_tokens, trained_mask
from kit.config import StoreConfig
from kit.lm.stream import ContextStream

EMBEDDED = "embedded"


class TokenBatch(NamedTuple):
    """A shuffled batch of activations with the provenance of every row."""

    x_in: torch.Tensor
    """[B, d_in] transcoder input."""
    y_out: torch.Tensor
    """[B, d_out] transcoder target."""
    token_ids: torch.Tensor
    """[B] vocabulary id of the token."""
    doc_ids: torch.Tensor
    """[B] document id."""
    positions: torch.Tensor
    """[B] position within the context (never a BOS position)."""
    doc_positions: torch.Tensor
    """[B] token offset within the document."""
    domains: torch.Tensor
    """[B] domain code; `store.domain_names[code]` is its name."""
    global_ids: torch.Tensor
    """[B] context_index * ctx_len + position: survives the shuffle, `store.context(gid)` gives the text back."""


class TokenProvenance(NamedTuple):
    """Where every token of some contexts came from: `[N, T]` int64 arrays, -1 on BOS and padding."""

    doc_ids: np.ndarray
    """Document id of the token."""
    doc_positions: np.ndarray
    """Token offset within its document."""
    domains: np.ndarray
    """Domain code; `store.domain_names[code]` is its name."""


class TranscoderActivationsStore:
    """Streams shuffled transcoder training pairs from a language model at one layer.

    `model` is a transformers causal LM (or a name for `kit.load_model`), `source` anything `kit.corpus.records.open_source`
    takes or "embedded" for the kit's multi-domain corpus. Options are `StoreConfig` fields. `shard=(rank, world)`
    under torchrun.
    """

    def __init__(self, model, source, layer: int, tokenizer=None, config: StoreConfig | None = None,
                 shard: tuple[int, int] = (0, 1), **options):
        config = config or StoreConfig(**options)  # bad options are refused before a model loads
        if isinstance(model, str):
            from kit.lm.models import load_model
            model, tokenizer = load_model(model)
        if tokenizer is None:
            raise ValueError("pass the model's tokenizer: TranscoderActivationsStore(model, source, layer, tokenizer=tok)")
        self._attach(model, layer)  # checks the layer before any text is read
        self._open_stream(ContextStream(source, tokenizer, config, shard), tokenizer, layer)

    @classmethod
    def on_stream(cls, model, stream: ContextStream, layer: int, tokenizer) -> TranscoderActivationsStore:
        """A store on a stream already built (and perhaps read ahead) from the same source and config."""
        store = cls.__new__(cls)
        store._attach(model, layer)
        store._open_stream(stream, tokenizer, layer)
        return store

    def _attach(self, model, layer: int) -> None:
        self.model, self.hooks, self.nn = model, hook_points(model, layer), as_nnsight(model)

    def _open_stream(self, stream: ContextStream, tokenizer, layer: int) -> None:
        """The model-free half of the store: its contexts, their order and the stream position (a store that
        reads its activations elsewhere, `kit.lm.cached_store`, builds only this)."""
        self.config, self.tokenizer, self.layer, self.stream = stream.config, tokenizer, layer, stream
        self.rank, self.world = stream.rank, stream.world
        self.source_name, self.doc_sources = stream.source_name, stream.doc_sources
        self._chunk, self._pos, self._buffer, self._acts = self.config.mix_refills - 2, 0, None, {}

    # ---- contexts ------------------------------------------------------------------------------------------
    @property
    def domain_names(self) -> list[str]:
        """Domain names by code."""
        return self.stream.domain_names

    @property
    def holdout_indices(self) -> list[int]:
        """Context indices of the held-out contexts (whole documents never trained on)."""
        return list(range(len(self.stream.holdout)))

    def context_at(self, index: int) -> Context:
        """The context `index` (held-out, or a training context this rank owns)."""
        return self.stream.context_at(int(index))

    def owns(self, index: int) -> bool:
        """Whether this rank owns context `index` (always, on one rank)."""
        return self.stream.owns(int(index))

    def train_contexts(self, n: int, start: int = 0) -> list[int]:
        """Context indices of this rank's training draws start..start+n-1, in the order refills take them."""
        return [self.stream.train_index(m) for m in range(start, start + n)]

    def tokens_for_contexts(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """`(tokens_NT, mask_NT)`: token ids (padding included) and the trained mask (False on BOS and padding)."""
        ctxs = [self.context_at(i) for i in indices]
        return stack_tokens(ctxs), trained_mask(ctxs)

    def token_provenance(self, indices) -> TokenProvenance:
        """Per-token provenance of contexts as `[N, T]` int64 arrays; -1 on BOS and padding."""
        return TokenProvenance(*np.stack([self.stream.provenance(self.context_at(i)) for i in indices], 1))

    def padding_share(self) -> float:
        """Share of the model's positions that are padding, over this rank's training contexts read so far."""
        return padding_share(self.stream.own)

    def padding_counts(self) -> tuple[int, int]:
        """`(padding, positions)` over this rank's training contexts read so far: sums merge across ranks."""
        own = self.stream.own
        return sum(len(c.token_ids) - c.length for c in own), len(own) * self.config.ctx_len

    # ---- activations ---------------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        """Width of the transcoder input (the residual stream width)."""
        return d_model(self.model)

    @property
    def d_out(self) -> int:
        """Width of the transcoder target."""
        return d_model(self.model)

    @property
    def device(self) -> str:
        """Where the model runs, and where a transcoder trained on this store goes."""
        return str(next(self.model.parameters()).device)

    @torch.inference_mode()
    def activations_for_contexts(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(x_NTD, y_NTD, mask_NT)` for contexts; `mask` is False on every BOS and on padding."""
        tokens, mask = self.tokens_for_contexts(indices)
        xs, ys = [], []
        for start in range(0, len(tokens), self.config.lm_batch):
            x, y = read_activations(self.nn, self.hooks, tokens[start:start + self.config.lm_batch],
                                     self.config.autocast)
            xs.append(x)
            ys.append(y)
        dtype = getattr(torch, self.config.dtype)
        return torch.cat(xs).to(dtype), torch.cat(ys).to(dtype), mask

    def _refill_acts(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x_ND, y_ND)` of refill r's trained tokens, in its layout's row order; kept while r is in the window."""
        if r not in self._acts:
            x, y, mask = self.activations_for_contexts(self.stream.refill_contexts(r))
            self._acts[r] = (x[mask], y[mask])
        return self._acts[r]

    def _load_chunk(self, t: int) -> None:
        """Build chunk t (rows in the stream's shuffled order), dropping refills that can give no more tokens."""
        self._acts = {r: v for r, v in self._acts.items() if r > t - self.config.mix_refills}
        r_N, i_N = self.stream.chunk_rows(t)
        self._chunk, self._pos, self._buffer = t, 0, None
        for r in np.unique(r_N):
            (x, y), meta = self._refill_acts(int(r)), self.stream.layout(int(r))
            if self._buffer is None:
                self._buffer = (x.new_empty(len(r_N), x.shape[1]), y.new_empty(len(r_N), y.shape[1]),
                                meta.new_empty(len(r_N), meta.shape[1]))
            dst, src = torch.as_tensor(np.flatnonzero(r_N == r)), torch.as_tensor(i_N[r_N == r])
            for buf, part in zip(self._buffer, (x, y, meta)):
                buf[dst] = part[src]

    def get_batch_with_tokens(self) -> TokenBatch:
        """The next shuffled batch of `batch_size` rows with their provenance."""
        parts, need = [], self.config.batch_size
        while need > 0:
            if self._buffer is None or self._pos >= len(self._buffer[0]):
                self._load_chunk(self._chunk + 1)
                continue
            take = min(need, len(self._buffer[0]) - self._pos)
            parts.append([t[self._pos:self._pos + take] for t in self._buffer])
            self._pos += take
            need -= take
        x, y, meta = (torch.cat(col) for col in zip(*parts))
        gctx, pos, tok, doc, doc_pos, dom = meta.unbind(1)
        return TokenBatch(x, y, tok, doc, pos, doc_pos, dom, gctx * self.config.ctx_len + pos)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next shuffled batch as `(x_in [B, d_in], y_out [B, d_out])`."""
        batch = self.get_batch_with_tokens()
        return batch.x_in, batch.y_out

    def consumed(self) -> dict[int, np.ndarray]:
        """Every context this rank has handed tokens of, with the [T] bool mask of the tokens handed out."""
        return self.stream.consumed(self._chunk, self._pos)

    # ---- provenance ------------------------------------------------------------------------------------------
    def context(self, global_id: int, before: int = 32, after: int = 8) -> list[int]:
        """Token ids around a token, clipped to its own document segment (a large `before` reaches its BOS)."""
        index, pos = divmod(int(global_id), self.config.ctx_len)
        ctx = self.context_at(index)
        seg = ctx.segment_at(pos)
        return ctx.token_ids[max(seg.start - 1, pos - before):min(seg.stop, pos + after + 1)].tolist()

    def decode_context(self, global_id: int, before: int = 32, after: int = 8) -> str:
        """The text around a token (see `context`)."""
        return self.tokenizer.decode(self.context(global_id, before, after))

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the stream stands: enough to resume at exactly the next batch."""
        return {"chunk": self._chunk, "pos": self._pos, "config": self.config.to_dict(), "layer": self.layer,
                "shard": [self.rank, self.world]}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        diff = [k for k in mine["config"] if state["config"].get(k) != mine["config"][k]]
        if diff or state["layer"] != self.layer or state.get("shard", mine["shard"]) != mine["shard"]:
            raise ValueError(f"the checkpoint's store settings differ from this store's in "
                             f"{diff or ['layer or shard']}: resume with the same preset and options as the original run")
        self._chunk, self._pos, self._buffer, self._acts = state["chunk"], state["pos"], None, {}
        if state["chunk"] >= self.config.mix_refills - 1:
            self._load_chunk(state["chunk"])
            self._pos = state["pos"]
