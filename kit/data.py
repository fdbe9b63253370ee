"""Text sources: records from a hub dataset (streamed), local files or a Dataset, and their documents' tokens."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

EMBEDDED = "embedded"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


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
        shown = repr(source) if isinstance(source, (str, Path)) else f"of type {type(source).__name__}"
        raise ValueError(f"unsupported text source {shown[:200]}: pass a hub dataset name, a local .jsonl/.parquet/.txt "
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


def iter_documents(records: Iterable[dict], tokenizer, text_field: str = "text",
                   domain_field: str | None = None) -> Iterator[tuple[list[int], int, int, str]]:
    """`(token_ids, doc_id, offset, domain)` per record, BOS removed (no BOS inside a document).

    A record may carry pre-tokenized `input_ids` (no BOS), a `doc_id` and a `chunk_start` (where in its document a
    pre-cut chunk starts); otherwise its text is tokenized and its index in the stream is its document id.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token; set tokenizer.bos_token before building contexts")
    for index, record in enumerate(records):
        ids = record.get("input_ids")
        if ids is None:
            text = _get(record, text_field)
            if not isinstance(text, str):
                raise ValueError(f"field {text_field!r} of record {index} is {type(text).__name__}, expected str")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        domain = str(_get(record, domain_field)) if domain_field else str(record.get("domain", ""))
        yield ([t for t in ids if t != bos], int(record.get("doc_id", index)), int(record.get("chunk_start", 0)),
               domain)
