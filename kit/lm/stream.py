"""ContextStream: the store's contexts and their order, computed from the text alone (no language model).

It reads documents, routes each whole document to the held-out set or to training by a seeded hash of its id,
packs them into contexts, keeps the held-out contexts and this rank's training contexts, and says which tokens
every refill and every shuffled chunk holds. Everything here is deterministic in (source, config, rank), which is
what makes a resumed store bit-identical and lets the final pass know exactly which tokens training consumed.
"""
from __future__ import annotations

import numpy as np
import torch

from kit.corpus.records import EMBEDDED, iter_documents, open_source
from kit.corpus.packing import Context, Packer, stack_tokens, trained_mask

_MASK64 = (1 << 64) - 1


def unit_hash(seed: int, key: int) -> float:
    """A uniform number in [0, 1) from (seed, key): splitmix64's finalizer, stable across runs and platforms."""
    h = (key * 0x9E3779B97F4A7C15 + (seed + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (h ^ (h >> 31)) / 2.0**64


class ContextStream:
    """Held-out and training contexts of one rank, and the token layout of refills and chunks."""

    def __init__(self, source, tokenizer, config, shard: tuple[int, int] = (0, 1)):
        self.config, (self.rank, self.world) = config, shard
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard {shard} must be (rank, world_size) with 0 <= rank < world_size")
        records = self._open(source, tokenizer)
        text_field = "text" if self.embedded else config.text_field
        self._docs = iter_documents(records, tokenizer, text_field, config.domain_field)
        self._packers = [Packer(tokenizer, config.ctx_len, config.min_tokens, config.pack) for _ in range(2)]
        self.holdout: list[Context] = []
        self.own: list[Context] = []  # this rank's training contexts: training context j = own[j // world]
        self.domain_names: list[str] = []
        self._code: dict[str, int] = {}
        self.n_train, self.exhausted, self._perm, self._layouts = 0, False, {}, {}
        while len(self.holdout) < config.holdout_contexts and self._read_one():
            pass
        self._fill_own(1)
        self._check_sizes()

    def _open(self, source, tokenizer):
        self.source_name = source if isinstance(source, str) else type(source).__name__
        self.doc_sources: dict[int, str] = {}
        self.embedded = isinstance(source, str) and source == EMBEDDED
        if self.embedded:
            from kit.corpus.embedded import embedded_chunks
            chunks = embedded_chunks(tokenizer, self.config.ctx_len - 1, seed=self.config.seed)
            self.doc_sources = dict(zip(chunks["doc_id"], chunks["source"]))  # for attribution notices
            return chunks
        return open_source(source, self.config.text_field, self.config.domain_field)

    def _check_sizes(self) -> None:
        h = self.config.holdout_contexts
        if not self.own and not self.holdout:
            raise ValueError("the text source produced no contexts: it is empty, or every document is shorter than "
                             f"min_tokens={self.config.min_tokens} tokens (lower min_tokens or add longer text)")
        if len(self.holdout) < h or not self.own:
            raise ValueError(f"the source gave {len(self.holdout)} held-out and {self.n_train} training contexts, "
                             f"but holdout_contexts={h} (drawing holdout_share={self.config.holdout_share} of the "
                             "documents) needs more: add text, or lower holdout_contexts")

    # ---- reading ---------------------------------------------------------------------------------------------
    def _read_one(self) -> bool:
        """Read and place one document; False once the source is exhausted."""
        doc = next(self._docs, None) if not self.exhausted else None
        train, held = self._packers
        if doc is None:
            if not self.exhausted:
                self.exhausted = True
                for ctx in train.flush():
                    self._add_train(ctx)
                self.holdout += list(held.flush())[:self.config.holdout_contexts - len(self.holdout)]
            return False
        ids, doc_id, offset, domain = doc
        if domain not in self._code:
            self._code[domain] = len(self.domain_names)
            self.domain_names.append(domain)
        if self.is_held_out(doc_id):
            for ctx in held.add(ids, doc_id, offset, domain) if len(self.holdout) < self.config.holdout_contexts else ():
                if len(self.holdout) < self.config.holdout_contexts:
                    self.holdout.append(ctx)
        else:
            for ctx in train.add(ids, doc_id, offset, domain):
                self._add_train(ctx)
        return True

    def is_held_out(self, doc_id: int) -> bool:
        """Whether document `doc_id` belongs to the held-out set (it is then never trained on)."""
        return self.config.holdout_contexts > 0 and unit_hash(self.config.seed, doc_id) < self.config.holdout_share

    def _add_train(self, ctx: Context) -> None:
        if self.n_train % self.world == self.rank:
            self.own.append(ctx)
        self.n_train += 1

    def _fill_own(self, n: int) -> None:
        while len(self.own) < n and self._read_one():
            pass

    # ---- indices -----------------------------------------------------------------------------------------------
    def train_index(self, m: int) -> int:
        """Context index of this rank's m-th training draw; the stream wraps around once the source is exhausted."""
        size = self.config.shuffle_contexts
        self._fill_own(m + 1)
        if self.exhausted:
            m %= len(self.own)
        block, offset = divmod(m, size)
        self._fill_own((block + 1) * size)
        size = min(size, len(self.own) - block * size)
        if (block, size) not in self._perm:
            gen = torch.Generator().manual_seed(self.config.seed * 7_919 + block)
            self._perm = {(block, size): torch.randperm(size, generator=gen).tolist()}
        local = block * self.config.shuffle_contexts + self._perm[(block, size)][offset]
        return self.config.holdout_contexts + local * self.world + self.rank

    def context_at(self, index: int) -> Context:
        """The held-out context `index`, or a training context this rank owns."""
        h = self.config.holdout_contexts
        if 0 <= index < len(self.holdout):
            return self.holdout[index]
        j = index - h
        if j < 0:
            raise ValueError(f"context {index} is not a context of this store ({len(self.holdout)} held out)")
        if j % self.world != self.rank:
            raise ValueError(f"context {index} belongs to rank {j % self.world}; this store is rank {self.rank}")
        self._fill_own(j // self.world + 1)  # a fresh store reads ahead to reach a saved run's contexts
        if j // self.world >= len(self.own):
            raise ValueError(f"context {index} is past the end of the source ({self.n_train} training contexts)")
        return self.own[j // self.world]

    def owns(self, index: int) -> bool:
        """Whether this rank owns context `index`: its training contexts, and held-out context i when
        i % world == rank (work on the held-out set is shared that way)."""
        h = self.config.holdout_contexts
        return (index if index < h else index - h) % self.world == self.rank

    def provenance(self, ctx: Context) -> np.ndarray:
        """[3, T] int64: document id, offset in the document and domain code of every token; -1 off documents."""
        out = np.full((3, len(ctx.token_ids)), -1, dtype=np.int64)
        for s in ctx.segments:
            out[0, s.start:s.stop] = s.doc_id
            out[1, s.start:s.stop] = s.doc_start + np.arange(s.stop - s.start)
            out[2, s.start:s.stop] = self._code[s.domain]
        return out

    # ---- refills and chunks ------------------------------------------------------------------------------------
    def refill_contexts(self, r: int) -> list[int]:
        """Context indices of refill r."""
        c = self.config.refill_contexts
        return [self.train_index(m) for m in range(r * c, (r + 1) * c)]

    def layout(self, r: int) -> torch.Tensor:
        """[N, 6] int64 rows (context index, position, token, doc id, doc position, domain) of refill r's trained
        tokens, in the row-major order of `x[mask]`."""
        if r not in self._layouts:
            idx = self.refill_contexts(r)
            ctxs = [self.context_at(i) for i in idx]
            n_N, pos_N = trained_mask(ctxs).nonzero(as_tuple=True)
            prov = torch.from_numpy(np.stack([self.provenance(c) for c in ctxs], 1))[:, n_N, pos_N]
            rows = torch.stack([torch.tensor(idx)[n_N], pos_N, stack_tokens(ctxs)[n_N, pos_N], *prov], 1)
            low = r - self.config.mix_refills
            self._layouts = {k: v for k, v in self._layouts.items() if k > low} | {r: rows}
        return self._layouts[r]

    def chunks(self, r: int, n: int) -> np.ndarray:
        """The chunk each of refill r's n tokens is handed out with: r + d for d uniform in 0..mix_refills-1, but
        never before chunk mix_refills-1, the first one handed out, so that even the first batches mix refills."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + r)
        d = self.config.mix_refills
        return np.maximum(r + torch.randint(0, d, (n,), generator=gen).numpy(), d - 1)

    def chunk_rows(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """`(refill_N, row_N)`: chunk t's tokens as rows of refill layouts, in the chunk's shuffled order."""
        parts = []
        for r in range(max(0, t - self.config.mix_refills + 1), t + 1) if t >= self.config.mix_refills - 1 else ():
            rows = np.flatnonzero(self.chunks(r, len(self.layout(r))) == t)
            parts.append(np.stack([np.full(len(rows), r), rows]))
        r_N, i_N = np.concatenate(parts, 1) if parts else np.zeros((2, 0), dtype=np.int64)
        gen = torch.Generator().manual_seed(self.config.seed * 999_983 + t)
        perm = torch.randperm(len(r_N), generator=gen).numpy()
        return r_N[perm], i_N[perm]

    def consumed(self, chunk: int, pos: int) -> dict[int, np.ndarray | None]:
        """Contexts handed out before (chunk, pos): index -> [T] mask of the tokens handed out, or None for all of
        its trained tokens (every refill older than the mixing window has given all its tokens)."""
        out: dict[int, np.ndarray | None] = {}
        d, T = self.config.mix_refills, self.config.ctx_len
        for r in range(0, max(chunk - d + 1, 0)):
            out.update(dict.fromkeys(self.refill_contexts(r)))
        taken = []
        for r in range(max(chunk - d + 1, 0), chunk + 1):
            rows = self.layout(r)
            taken.append(rows[torch.as_tensor(self.chunks(r, len(rows)) < chunk)])
        if chunk >= 0:
            r_N, i_N = (a[:pos] for a in self.chunk_rows(chunk))
            taken += [self.layout(int(r))[torch.as_tensor(i_N[r_N == r])] for r in np.unique(r_N)]
        for ctx, p in (torch.cat(taken)[:, :2].tolist() if taken else []):
            if ctx not in out or out[ctx] is not None:
                out.setdefault(ctx, np.zeros(T, dtype=bool))[p] = True
        return out
