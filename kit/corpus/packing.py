"""Fixed-length, BOS-first token contexts cut from documents, packed or padded, with per-token provenance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from kit.corpus.records import iter_documents


@dataclass(frozen=True)
class Segment:
    """The tokens of one document inside a context: positions [start, stop), a BOS just before `start`."""

    start: int
    """First position (in the context) of the document's tokens."""
    stop: int
    """One past the last."""
    doc_id: int
    """Index of the source document within the stream."""
    doc_start: int
    """Token offset within the document of position `start`."""
    domain: str
    """Domain label ("" when the source has no domain field)."""


@dataclass(frozen=True, eq=False)
class Context:
    """One context: BOS, a document's tokens, (packed) BOS and the next document's tokens, ..., then padding.

    Tokens are an int32 array (4 bytes a token; a tuple of Python ints costs about 36), since a run keeps the
    contexts it trains on.
    """

    token_ids: np.ndarray
    """[ctx_len] int32: BOS first; `length` of them are real (BOS separators included), the rest is padding."""
    length: int
    """Real tokens, BOS included."""
    segments: tuple[Segment, ...]
    """The documents in the context, in order."""

    @property
    def doc_id(self) -> int:
        """The first document's id."""
        return self.segments[0].doc_id

    @property
    def doc_start(self) -> int:
        """The first document's offset at position 1."""
        return self.segments[0].doc_start

    @property
    def domain(self) -> str:
        """The first document's domain."""
        return self.segments[0].domain

    def segment_at(self, pos: int) -> Segment:
        """The document segment that holds position `pos` (ValueError on a BOS or padding position)."""
        for seg in self.segments:
            if seg.start <= pos < seg.stop:
                return seg
        raise ValueError(f"position {pos} is a BOS or padding position of this context")

    def trained_mask(self) -> np.ndarray:
        """[ctx_len] bool: True on document tokens, never on a BOS or padding."""
        mask = np.zeros(len(self.token_ids), dtype=bool)
        for seg in self.segments:
            mask[seg.start:seg.stop] = True
        return mask


class Packer:
    """Cuts documents into BOS-first contexts of `ctx_len` tokens.

    `pack=True` puts several documents in one context, each after a BOS separator (as SAELens does), so the
    language model spends no compute on padding; a document longer than the room left continues in the next
    context, after its BOS. `pack=False` gives each document contexts of its own, padded at the end. Pieces shorter
    than `min_tokens` are dropped (a packed piece that would be that short starts a new context instead).
    """

    def __init__(self, tokenizer, ctx_len: int, min_tokens: int = 8, pack: bool = True):
        self.bos, self.ctx_len, self.min_tokens, self.pack = tokenizer.bos_token_id, ctx_len, min_tokens, pack
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.bos
        self._tokens: list[int] = [self.bos]
        self._segments: list[Segment] = []

    def add(self, ids: list[int], doc_id: int, offset: int, domain: str) -> Iterator[Context]:
        """Place one document; yields the contexts it completes."""
        cursor = 0
        while len(ids) - cursor >= self.min_tokens:
            sep = 1 if self._segments else 0  # a packed document gets a BOS of its own
            take = min(len(ids) - cursor, self.ctx_len - len(self._tokens) - sep)
            left = len(ids) - cursor - take
            if 0 < left < self.min_tokens and take - (self.min_tokens - left) >= self.min_tokens:
                take -= self.min_tokens - left  # a tail this short would be dropped: leave it enough tokens
            if self._segments and (take < self.min_tokens or not self.pack):
                yield self._emit()
                continue
            self._tokens += [self.bos] * sep
            start = len(self._tokens)
            self._tokens += ids[cursor:cursor + take]
            self._segments.append(Segment(start, start + take, doc_id, offset + cursor, domain))
            cursor += take
            if len(self._tokens) == self.ctx_len:
                yield self._emit()
        if not self.pack:
            yield from self.flush()

    def flush(self) -> Iterator[Context]:
        """The last, partly filled context, if any."""
        if self._segments:
            yield self._emit()

    def _emit(self) -> Context:
        n = len(self._tokens)
        tokens = np.full(self.ctx_len, self.pad, dtype=np.int32)
        tokens[:n] = self._tokens
        ctx = Context(tokens, n, tuple(self._segments))
        self._tokens, self._segments = [self.bos], []
        return ctx


def iter_contexts(records: Iterable[dict], tokenizer, ctx_len: int, text_field: str = "text",
                  domain_field: str | None = None, min_tokens: int = 8, pack: bool = False) -> Iterator[Context]:
    """The contexts of a record stream (see `kit.corpus.records.iter_documents` and `Packer`)."""
    packer = Packer(tokenizer, ctx_len, min_tokens, pack)
    for doc in iter_documents(records, tokenizer, text_field, domain_field):
        yield from packer.add(*doc)
    yield from packer.flush()


def stack_tokens(contexts: list[Context]) -> torch.Tensor:
    """`tokens_NT` (int64) of a list of contexts, padding included."""
    return torch.from_numpy(np.stack([c.token_ids for c in contexts]).astype(np.int64))


def real_mask(contexts: list[Context]) -> torch.Tensor:
    """[N, T] bool: True on every real token (BOS included), False on padding."""
    lengths = torch.tensor([c.length for c in contexts])
    return torch.arange(len(contexts[0].token_ids))[None, :] < lengths[:, None]


def trained_mask(contexts: list[Context]) -> torch.Tensor:
    """[N, T] bool: True on document tokens, False on every BOS (first or separator) and on padding."""
    return torch.from_numpy(np.stack([c.trained_mask() for c in contexts]))


def padding_share(contexts: Iterable[Context]) -> float:
    """Share of the language model's positions that are padding."""
    total = pad = 0
    for c in contexts:
        total, pad = total + len(c.token_ids), pad + len(c.token_ids) - c.length
    return pad / total if total else 0.0
