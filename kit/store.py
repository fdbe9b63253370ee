"""TranscoderActivationsStore: shuffled (MLP input, MLP output) pairs that remember which token they came from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch

from kit.data import Context, iter_contexts, open_source, stack_tokens
from kit.hooks import d_model, get_module, hook_points

EMBEDDED = "embedded"


@dataclass(frozen=True)
class StoreConfig:
    """How contexts are cut, run through the model and shuffled."""

    ctx_len: int = 128
    """Tokens per context, BOS included."""
    batch_size: int = 4096
    """Tokens per training batch."""
    refill_contexts: int = 256
    """Contexts whose tokens are shuffled together in one buffer refill."""
    shuffle_contexts: int = 2048
    """Contexts read ahead and permuted before refills take them, so that a refill mixes many documents."""
    lm_batch: int = 32
    """Contexts per language-model forward pass."""
    holdout_contexts: int = 64
    """The first contexts of the stream, kept out of training for evaluation and the final top-k pass."""
    dtype: str = "float32"
    """Storage dtype of the activations ('float32', 'bfloat16' or 'float16')."""
    autocast: bool = False
    """Run the language model under bf16 autocast (about 2.5x faster on a CPU with AMX, ~1% activation error)."""
    seed: int = 0
    """Seed of the shuffle."""
    min_tokens: int = 8
    """Document pieces shorter than this are not made into contexts."""
    text_field: str = "text"
    """Record field holding the text."""
    domain_field: str | None = None
    """Record field holding a domain label, if any (dotted paths such as 'meta.pile_set_name' work)."""

    def __post_init__(self):
        if self.ctx_len < 2 or min(self.batch_size, self.refill_contexts, self.shuffle_contexts, self.lm_batch) < 1:
            raise ValueError(f"ctx_len must be >= 2 and batch_size, refill_contexts, shuffle_contexts, lm_batch >= 1, got {self}")
        if self.holdout_contexts < 0 or not 1 <= self.min_tokens < self.ctx_len:
            raise ValueError(f"holdout_contexts must be >= 0 and 1 <= min_tokens < ctx_len, got {self}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype {self.dtype!r}: use 'float32', 'bfloat16' or 'float16'")

    def to_dict(self) -> dict:
        return asdict(self)


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
    """[B] position within the context (1 .. ctx_len - 1; 0 is BOS and never returned)."""
    doc_positions: torch.Tensor
    """[B] token offset within the document."""
    domains: torch.Tensor
    """[B] domain code; `store.domain_names[code]` is its name."""
    global_ids: torch.Tensor
    """[B] context_index * ctx_len + position: survives the shuffle, `store.context(gid)` gives the text back."""


def trace_activations(nn_model, hooks, tokens_BT: torch.Tensor, autocast: bool = False):
    """`(x_BTD, y_BTD)` at the hook points, read with an nnsight trace that stops after the MLP's block."""
    device = next(nn_model._module.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        with nn_model.trace(tokens_BT.to(device)) as tracer:
            src = get_module(nn_model, hooks.in_path)
            raw = (src.input if hooks.in_from == "input" else src.output).save()
            y = get_module(nn_model, hooks.out_path).output.save()
            tracer.stop()  # later layers are wasted work
    return hooks.transform_input(raw), y


class TranscoderActivationsStore:
    """Streams shuffled transcoder training pairs from a language model at one layer.

    `model` is a transformers causal LM (or a name for `kit.load_model`), `source` anything `kit.data.open_source`
    takes or "embedded" for the kit's multi-domain corpus. Options are `StoreConfig` fields.
    """

    def __init__(self, model, source, layer: int, tokenizer=None, config: StoreConfig | None = None,
                 shard: tuple[int, int] = (0, 1), **options):
        if isinstance(model, str):
            from kit.models import load_model
            model, tokenizer = load_model(model)
        if tokenizer is None:
            raise ValueError("pass the model's tokenizer: TranscoderActivationsStore(model, source, layer, tokenizer=tok)")
        self.config = config or StoreConfig(**options)
        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.rank, self.world = shard  # torchrun: this rank trains on every world-th context of the stream
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard {shard} must be (rank, world_size) with 0 <= rank < world_size")
        self.hooks = hook_points(model, layer)
        from nnsight import NNsight
        self._nn = NNsight(model)
        self._records = self._open(source)
        self._reader = iter_contexts(self._records, tokenizer, self.config.ctx_len, "text" if self._embedded
                                     else self.config.text_field, self.config.domain_field, self.config.min_tokens)
        self.contexts: list[Context] = []
        self.domain_names: list[str] = []
        self._domain_code: dict[str, int] = {}
        self._exhausted = False
        self._refill, self._pos, self._buffer, self._perms = -1, 0, None, {}
        self._fill_table(max(self.config.holdout_contexts + 1, 1))
        if len(self.contexts) <= self.config.holdout_contexts:
            raise ValueError(f"the source gave {len(self.contexts)} contexts, but holdout_contexts="
                             f"{self.config.holdout_contexts} leaves none to train on: add text or lower holdout_contexts")

    def _open(self, source):
        self._embedded = isinstance(source, str) and source == EMBEDDED
        self.source_name = source if isinstance(source, str) else type(source).__name__
        self.doc_sources: dict[int, str] = {}
        if self._embedded:
            from kit.corpus import embedded_chunks
            chunks = embedded_chunks(self.tokenizer, self.config.ctx_len - 1, seed=self.config.seed)
            self.doc_sources = dict(zip(chunks["doc_id"], chunks["source"]))  # for attribution notices
            return chunks
        return open_source(source, self.config.text_field, self.config.domain_field)

    # ---- the context table -------------------------------------------------------------------------------
    def _fill_table(self, n: int) -> None:
        while len(self.contexts) < n and not self._exhausted:
            ctx = next(self._reader, None)
            if ctx is None:
                self._exhausted = True
                break
            self._domain_code.setdefault(ctx.domain, len(self._domain_code))
            if len(self.domain_names) < len(self._domain_code):
                self.domain_names.append(ctx.domain)
            self.contexts.append(ctx)
        if not self.contexts:
            raise ValueError("the text source produced no contexts: it is empty, or every document is shorter than "
                             f"min_tokens={self.config.min_tokens} tokens (lower min_tokens or add longer text)")

    def _train_context(self, j: int) -> int:
        """Table index of the j-th training context; the stream wraps around once the source is exhausted."""
        h, size = self.config.holdout_contexts, self.config.shuffle_contexts
        self._fill_table(h + j + 1)
        if self._exhausted:
            j %= len(self.contexts) - h
        block, offset = divmod(j, size)
        self._fill_table(h + (block + 1) * size)
        size = min(size, len(self.contexts) - h - block * size)
        if (block, size) not in self._perms:
            gen = torch.Generator().manual_seed(self.config.seed * 7_919 + block)
            self._perms = {(block, size): torch.randperm(size, generator=gen).tolist()}
        return h + block * self.config.shuffle_contexts + self._perms[(block, size)][offset]

    def seen_contexts(self) -> set[int]:
        """Table indices of every context the refills so far have trained on, across all ranks."""
        n = (self._refill + 1) * self.config.refill_contexts * self.world
        return {self._train_context(j) for j in range(n)}

    @property
    def holdout_indices(self) -> list[int]:
        """Table indices of the held-out contexts."""
        return list(range(self.config.holdout_contexts))

    # ---- activations ---------------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        """Width of the transcoder input (the residual stream width)."""
        return d_model(self.model)

    @property
    def d_out(self) -> int:
        """Width of the transcoder target."""
        return d_model(self.model)

    def context_at(self, index: int) -> Context:
        """The table context `index` (reading the source ahead when a saved run refers to a later one)."""
        self._fill_table(int(index) + 1)
        return self.contexts[int(index)]

    @torch.inference_mode()
    def activations_for_contexts(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(x_NTD, y_NTD, mask_NT)` for table contexts; `mask` is False on BOS and padding."""
        tokens, mask = stack_tokens([self.context_at(i) for i in indices])
        mask[:, 0] = False
        xs, ys = [], []
        for start in range(0, len(tokens), self.config.lm_batch):
            x, y = trace_activations(self._nn, self.hooks, tokens[start:start + self.config.lm_batch],
                                     self.config.autocast)
            xs.append(x)
            ys.append(y)
        dtype = getattr(torch, self.config.dtype)
        return torch.cat(xs).to(dtype), torch.cat(ys).to(dtype), mask

    def _load_refill(self, r: int) -> None:
        c = self.config.refill_contexts
        idx = [self._train_context(j * self.world + self.rank) for j in range(r * c, (r + 1) * c)]
        x, y, mask = self.activations_for_contexts(idx)
        ctx = torch.tensor(idx)[:, None].expand_as(mask)
        pos = torch.arange(mask.shape[1])[None, :].expand_as(mask)
        tokens = stack_tokens([self.contexts[i] for i in idx])[0]
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + r)
        perm = torch.randperm(int(mask.sum()), generator=gen)
        self._buffer = (x[mask][perm], y[mask][perm], tokens[mask][perm], ctx[mask][perm], pos[mask][perm])
        self._refill, self._pos = r, 0

    def get_batch_with_tokens(self) -> TokenBatch:
        """The next shuffled batch of `batch_size` rows with their provenance."""
        parts, need = [], self.config.batch_size
        while need > 0:
            if self._buffer is None or self._pos >= len(self._buffer[0]):
                self._load_refill(self._refill + 1)
            take = min(need, len(self._buffer[0]) - self._pos)
            parts.append([t[self._pos:self._pos + take] for t in self._buffer])
            self._pos += take
            need -= take
        x, y, tok, ctx, pos = (torch.cat(col) for col in zip(*parts))
        return TokenBatch(x, y, tok, *self._provenance(ctx, pos), ctx * self.config.ctx_len + pos)

    def _provenance(self, ctx: torch.Tensor, pos: torch.Tensor):
        meta = torch.tensor([[c.doc_id, c.doc_start, self._domain_code[c.domain]] for c in
                             (self.contexts[i] for i in ctx.tolist())], dtype=torch.long).reshape(-1, 3)
        return meta[:, 0], pos, meta[:, 1] + pos - 1, meta[:, 2]

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next shuffled batch as `(x_in [B, d_in], y_out [B, d_out])`."""
        batch = self.get_batch_with_tokens()
        return batch.x_in, batch.y_out

    # ---- provenance ------------------------------------------------------------------------------------------
    def context(self, global_id: int, before: int = 32, after: int = 8) -> list[int]:
        """Token ids around a token, clipped to its own context (a large `before` reaches back to its BOS)."""
        index, pos = divmod(int(global_id), self.config.ctx_len)
        if index >= 0:
            self._fill_table(index + 1)  # a fresh store reads ahead to reach a saved run's contexts
        if not 0 <= index < len(self.contexts):
            raise ValueError(f"global id {global_id} refers to context {index}, but the store has "
                             f"{len(self.contexts)} contexts")
        ctx = self.contexts[index]
        return list(ctx.token_ids[max(0, pos - before):min(ctx.length, pos + after + 1)])

    def decode_context(self, global_id: int, before: int = 32, after: int = 8) -> str:
        """The text around a token (see `context`)."""
        return self.tokenizer.decode(self.context(global_id, before, after))

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the stream stands: enough to resume at exactly the next batch."""
        return {"refill": self._refill, "pos": self._pos, "config": self.config.to_dict(), "layer": self.layer}

    def load_state_dict(self, state: dict) -> None:
        mine = {"config": self.config.to_dict(), "layer": self.layer}
        diff = [k for k in mine["config"] if state["config"].get(k) != mine["config"][k]]
        if diff or state["layer"] != self.layer:
            raise ValueError(f"the checkpoint's store settings differ from this store's in {diff or ['layer']}: "
                             "resume with the same preset and options as the original run")
        if state["refill"] >= 0:
            self._load_refill(state["refill"])
            self._pos = state["pos"]


def config_fields() -> list[str]:
    """Names of the `StoreConfig` options (the CLI exposes them)."""
    return [f.name for f in fields(StoreConfig)]
