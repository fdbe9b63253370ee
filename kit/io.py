"""Files the kit writes and reads: one atomic-write helper, and the one place that reads KIT_CACHE."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Folder for the kit's caches (model conversions, tokenized corpora); `KIT_CACHE` overrides ~/.cache/kit."""
    return Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "kit"))


def atomic_write(dest, write) -> None:
    """write(tmp) into a temp file beside dest, then os.replace it, so readers never see half a file."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(dest, text: str) -> None:
    """`dest.write_text(text)`, atomically."""
    atomic_write(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(dest, data) -> None:
    """`data` as indented JSON, atomically (floats of numpy types are written as floats)."""
    write_text(dest, json.dumps(data, indent=2, default=float))


def flatten(prefix: str, tree: dict, out: dict) -> None:
    """Add the tensors of a nested dict to `out` under dotted names (`prefix.key.subkey`), on the CPU."""
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flatten(name, value, out)
        else:
            out[name] = value.detach().contiguous().cpu()


def unflatten(prefix: str, tensors: dict) -> dict:
    """The nested dict under `prefix` of a dict that `flatten` filled."""
    tree: dict = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        *path, last = name[len(prefix) + 1:].split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return tree
