"""Text sources: records from a hub dataset (streamed), local files or a Dataset, and their documents' tokens."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable, Iterator

EMBEDDED = "embedded"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def open_source(source, text_field: str = "text", domain_field: str | None = None, split: str = "train"):
    """Return an iterable of records from a hub name (streamed), a local file, a Dataset or 'embedded'."""
    import datasets
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        ds = source
    elif isinstance(source, (str, Path)) and source != EMBEDDED:
        check_source(source)
        path = Path(source).expanduser()
        ds = _open_files(path, split) if path.exists() else datasets.load_dataset(source, split=split, streaming=True)
    else:
        shown = repr(source) if isinstance(source, (str, Path)) else f"of type {type(source).__name__}"
        raise ValueError(f"unsupported text source {shown[:200]}: pass a hub dataset name, a local .jsonl/.parquet/.txt "
                         "file or folder, a datasets.Dataset, or use kit.corpus.embedded.embedded_chunks for 'embedded'")
    _check_fields(ds, text_field, domain_field, str(source) if isinstance(source, (str, Path)) else "")
    return ds


def check_source(source) -> None:
    """Refuse, in one line and before any model loads, a source that cannot be read: a local path with nothing
    there or no records, or a name that is neither a local path nor a reachable hub dataset."""
    if not isinstance(source, (str, Path)) or source == EMBEDDED:
        return  # a Dataset is checked when opened
    path = Path(source).expanduser()
    if path.exists():
        _local_files(path)
    elif isinstance(source, Path) or looks_local(source):
        raise ValueError(f"source {str(source)!r} looks like a local path, but nothing is there"
                         f"{did_you_mean(path.name, siblings(path) + [EMBEDDED])}")
    elif (why := _hub_problem(source)) is not None:
        raise ValueError(f"source {source!r} is neither a local path nor a reachable hub dataset ({why})"
                         f"{did_you_mean(source, [EMBEDDED])}")


def looks_local(name: str) -> bool:
    """Whether `name` reads as a file-system path rather than a hub id (`org/name` has a slash too)."""
    return (name.startswith(("/", "./", "../", "~")) or (os.sep != "/" and os.sep in name)
            or Path(name).suffix in _FILE_BUILDERS)


def did_you_mean(name: str, options: list[str]) -> str:
    """"; did you mean 'x'?" for the option closest to `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def siblings(path: Path) -> list[str]:
    """Names beside `path` (to suggest one when `path` is mistyped)."""
    return [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []


def _hub_problem(name: str) -> str | None:
    """Why `name` is not a dataset on the hub, asked once with no retries (offline: the cache only); None if it is."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        try:
            snapshot_download(name, repo_type="dataset", local_files_only=True)
            return None
        except Exception:  # not cached, or not a valid name: either way nothing to read offline
            return "offline: HF_HUB_OFFLINE is set and it is not in the local hub cache"
    try:
        HfApi().dataset_info(name, timeout=10)
    except GatedRepoError:
        return None  # it is there; load_dataset says how to get access
    except RepositoryNotFoundError:
        return "the hub has no such dataset, or it is private and HF_TOKEN is not set"
    except HFValidationError:
        return "not a valid hub dataset name"
    except Exception as err:  # DNS, proxy, timeout: fail at once rather than retry for half a minute
        return f"no network: {type(err).__name__}: {str(err)[:120]}"
    return None


def _local_files(path: Path) -> tuple[list[Path], str]:
    """The files of a local source and their `datasets` builder; ValueError if they are mixed or all empty."""
    files = sorted(p for p in path.rglob("*") if p.suffix in _FILE_BUILDERS) if path.is_dir() else [path]
    kinds = {_FILE_BUILDERS.get(p.suffix) for p in files}
    if not files or None in kinds or len(kinds) != 1:
        raise ValueError(f"{path}: expected .jsonl, .json, .parquet or .txt files of one kind, found "
                         f"{sorted({p.suffix for p in files}) or 'nothing'}")
    if all(p.stat().st_size == 0 for p in files):
        raise ValueError(f"the source {path} is empty: it holds no records")
    return files, kinds.pop()


def _open_files(path: Path, split: str):
    import datasets
    files, builder = _local_files(path)
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split=split, streaming=True)
    except StopIteration:  # datasets reads the first record to find the columns, and there is none
        raise ValueError(f"the source {path} is empty: it holds no records") from None


def _check_fields(ds, text_field: str, domain_field: str | None, name: str = "") -> None:
    names = ds.column_names
    if not names:  # some streamed datasets only know their columns after the first record
        first = next(iter(ds), None)
        if first is None:
            raise ValueError(f"the source {name or 'given'} is empty: it holds no records")
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
