"""Text sources and their fixed-length, BOS-first token contexts with document provenance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

EMBEDDED = "embedded"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def domains(**kwargs):
    """The embedded multi-domain corpus: `{domain: [Document, ...]}` (see `kit.corpus`)."""
    from kit.corpus import domains as _domains
    return _domains(**kwargs)


@dataclass(frozen=True)
class Context:
    """One fixed-length context: BOS, then up to ctx_len - 1 tokens of one document, then padding."""

    token_ids: tuple[int, ...]
    """BOS first, the document's tokens after it; `length` of them are real, the rest is padding."""
    length: int
    """Real tokens, BOS included."""
    doc_id: int
    """Index of the source document within the stream."""
    doc_start: int
    """Token offset within the document of position 1 (the first token after BOS)."""
    domain: str
    """Domain label ("" when the source has no domain field)."""


def open_source(source, text_field: str = "text", domain_field: str | None = None, split: str = "train"):
    """Return an iterable of records from a hub name (streamed), a local file, a Dataset or 'embedded'."""
    import datasets
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        ds = source
    elif isinstance(source, (str, Path)) and Path(source).exists():
        ds = _open_files(Path(source), split)
    elif isinstance(source, str) and source != EMBEDDED:
        ds = datasets.load_dataset(source, split=split, streaming=True)
    else:
        raise ValueError(f"unsupported text source {source!r}: pass a hub dataset name, a local .jsonl/.parquet/.txt "
                         "file or folder, a datasets.Dataset, or use kit.corpus.embedded_chunks for 'embedded'")
    _check_fields(ds, text_field, domain_field)
    return ds


def _open_files(path: Path, split: str):
    import datasets
    files = sorted(p for p in path.rglob("*") if p.suffix in _FILE_BUILDERS) if path.is_dir() else [path]
    kinds = {_FILE_BUILDERS.get(p.suffix) for p in files}
    if not files or None in kinds or len(kinds) != 1:
        raise ValueError(f"{path}: expected .jsonl, .json, .parquet or .txt files of one kind, found "
                         f"{sorted({p.suffix for p in files}) or 'nothing'}")
    return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split=split, streaming=True)


def _check_fields(ds, text_field: str, domain_field: str | None) -> None:
    names = ds.column_names
    if names is None:  # some streamed datasets only know their columns after the first record
        first = next(iter(ds), None)
        if first is None:
            raise ValueError("the text source is empty: it produced no records")
        names = list(first)
    for field in (text_field, domain_field):
        if field is not None and field.split(".")[0] not in names:
            raise ValueError(f"field {field!r} is not in the source; available fields: {sorted(names)}")


def _get(record: dict, field: str):
    value = record
    for part in field.split("."):  # dotted fields reach into nested records, e.g. meta.pile_set_name
        value = value[part]
    return value


def iter_contexts(records: Iterable[dict], tokenizer, ctx_len: int, text_field: str = "text",
                  domain_field: str | None = None, min_tokens: int = 8) -> Iterator[Context]:
    """Cut each document into contexts of `ctx_len` tokens: BOS first, no BOS inside, padding at the end.

    A record may carry pre-tokenized `input_ids` (no BOS), a `doc_id` and a `chunk_start`; otherwise its text is
    tokenized and its index in the stream is its document id. Pieces shorter than `min_tokens` are dropped.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token; set tokenizer.bos_token before building contexts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    span = ctx_len - 1
    for index, record in enumerate(records):
        ids = record.get("input_ids")
        if ids is None:
            text = _get(record, text_field)
            if not isinstance(text, str):
                raise ValueError(f"field {text_field!r} of record {index} is {type(text).__name__}, expected str")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = [t for t in ids if t != bos]  # no BOS in the middle of a context
        domain = str(_get(record, domain_field)) if domain_field else str(record.get("domain", ""))
        doc_id = int(record.get("doc_id", index))
        offset = int(record.get("chunk_start", 0))  # pre-cut chunks say where in their document they start
        for start in range(0, len(ids), span):
            piece = ids[start:start + span]
            if len(piece) < min_tokens:
                continue
            tokens = (bos, *piece) + (pad,) * (span - len(piece))
            yield Context(tokens, len(piece) + 1, doc_id, offset + start, domain)


def take_contexts(contexts: Iterator[Context], n: int) -> list[Context]:
    """Up to `n` contexts from an iterator."""
    out = []
    for ctx in contexts:
        out.append(ctx)
        if len(out) == n:
            break
    return out


def stack_tokens(contexts: list[Context]) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokens_NT` (int64) and the real-token mask `mask_NT` (False on padding) of a list of contexts."""
    tokens = torch.tensor([c.token_ids for c in contexts], dtype=torch.long)
    lengths = torch.tensor([c.length for c in contexts])
    mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return tokens, mask
