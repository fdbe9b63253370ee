"""The activation cache on disk: its manifest, its shards, and the identity of the model and text that wrote it.

A cache folder (`python -m kit cache`, `kit.lm.cache_writer`) holds `manifest.json` and one safetensors file per
(rank, refill), `shard-r{rank:03d}-{refill:06d}.safetensors`, holding exactly what the live store computes for that
refill (`store._refill_acts(r)`, in its layout's row order):

    x_in [N, d_in], y_out [N, d_out]   in the storage dtype
    token_ids [N], global_ids [N]       int64; global id = context_index * ctx_len + position
    layout [N, 6]                       int64 `ContextStream.layout(r)`: context index, position, token, doc id,
                                        doc position, domain code (a reader checks the text stream still gives it)

The manifest says what wrote it (`identity`: model and revision, layer, hook points, tokenizer, source, the
StoreConfig fields that fix the stream layout or change the values), how (storage dtype, world size, tokens
asked for) and, once `complete`, every shard. Nothing is ever pickled: safetensors and JSON only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from kit.config import RunConfig
from kit.lm.hooks import d_model, hook_points
from kit.lm.models import EMBEDDED, _explain_load_error, check_model_name, embedded_folder

FORMAT = 1
MANIFEST = "manifest.json"
LAYOUT_FIELDS = ("ctx_len", "refill_contexts", "mix_refills", "shuffle_contexts", "seed", "holdout_contexts",
                 "holdout_share", "pack", "min_tokens", "text_field", "domain_field")
"""StoreConfig fields that fix which tokens every refill and every chunk holds: a reader must use the writer's."""
VALUE_FIELDS = ("autocast",)
"""StoreConfig fields that change the activation values: a reader must use the writer's."""
FREE_FIELDS = ("batch_size", "lm_batch", "dtype")
"""StoreConfig fields a reader sets as it likes: batches are cut from the same chunks, `lm_batch` only runs the
model for evaluation (it can move the last bits of a value; recorded as `lm_batch`), `dtype` casts on reading."""
DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
META_BYTES = 8 * 8
"""int64 bytes per token besides the activations: token_ids, global_ids and the six layout columns."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WEIGHT_HASHES: dict[tuple, str] = {}


def shard_file(rank: int, refill: int) -> str:
    """File name of a rank's refill in a cache folder."""
    return f"shard-r{rank:03d}-{refill:06d}.safetensors"


def bytes_per_token(d_in: int, d_out: int, dtype: str) -> int:
    """Disk bytes of one cached token (activations in `dtype` and the int64 provenance; headers aside)."""
    return (d_in + d_out) * DTYPES[dtype] + META_BYTES


# ---- identity of the model, tokenizer and text -------------------------------------------------------------
def file_sha256(path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    """sha256 over the weight files of a model folder (names and bytes), computed once per process per version."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _WEIGHT_HASHES:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}:{file_sha256(p)}\n".encode())
        _WEIGHT_HASHES[key] = "sha256:" + h.hexdigest()
    return _WEIGHT_HASHES[key]


def model_revision(name: str) -> str:
    """The embedded model's or a local folder's weight-file hash (`sha256:...`), a hub model's commit hash, or
    'unknown' when the hub cache does not say."""
    if name == EMBEDDED:
        return weights_sha256(embedded_folder())
    if Path(name).expanduser().is_dir():
        return weights_sha256(Path(name).expanduser())
    try:
        from transformers.utils.hub import cached_file, extract_commit_hash
        return extract_commit_hash(cached_file(name, "config.json", token=os.environ.get("HF_TOKEN")), None) \
            or "unknown"
    except (OSError, ValueError, ImportError):
        return "unknown"


def _folder(name: str):
    check_model_name(name)
    return embedded_folder() if name == EMBEDDED else (Path(name).expanduser() if Path(name).expanduser().is_dir()
                                                        else name)


def load_tokenizer(name: str):
    """The tokenizer of model `name` ('embedded', a hub id or a folder) without its weights."""
    from transformers import AutoTokenizer
    folder = _folder(name)
    try:
        return AutoTokenizer.from_pretrained(folder, token=os.environ.get("HF_TOKEN"))
    except OSError as err:
        raise _explain_load_error(str(folder), err) from err


def model_skeleton(name: str):
    """Model `name` built on the meta device from its config: shapes and module paths, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = _folder(name)
    try:
        config = AutoConfig.from_pretrained(folder, token=os.environ.get("HF_TOKEN"))
    except OSError as err:
        raise _explain_load_error(str(folder), err) from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def tokenizer_hash(tokenizer) -> str:
    """sha256 of a tokenizer's vocabulary (token -> id) and its BOS/EOS/PAD ids."""
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    text = json.dumps([sorted(tokenizer.get_vocab().items()), specials], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def identity(config: RunConfig, tokenizer) -> dict:
    """What the activations of `config` depend on: model (name, revision, dtype), layer and hook points, widths,
    tokenizer, source and the StoreConfig layout and value fields. A cache serves a run when these are equal."""
    skeleton = model_skeleton(config.model)
    hooks = hook_points(skeleton, config.layer)  # refuses a layer out of range
    return {"model": config.model, "revision": model_revision(config.model), "model_dtype": config.model_dtype,
            "layer": config.layer, "hooks": dataclasses.asdict(hooks), "d_in": d_model(skeleton),
            "d_out": d_model(skeleton), "tokenizer": {"name": config.model, "sha256": tokenizer_hash(tokenizer)},
            "source": config.source,
            "store": {f: getattr(config.store, f) for f in LAYOUT_FIELDS + VALUE_FIELDS}}


def differences(cache: dict, other: dict, names: tuple[str, str] = ("cache", "run"), prefix: str = "") -> list[str]:
    """`field: cache X, run Y` for every field of `other` that `cache` holds differently (nested fields dotted);
    an 'unknown' revision matches any."""
    out = []
    for key, want in other.items():
        have = cache.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            out += differences(have, want, names, f"{prefix}{key}.")
        elif have != want and not (key == "revision" and "unknown" in (have, want)):
            out.append(f"{prefix}{key}: {names[0]} {have!r}, {names[1]} {want!r}")
    return out


# ---- the manifest -----------------------------------------------------------------------------------------
def read_manifest(path, complete: bool = True) -> dict:
    """The manifest of cache folder `path`; refused clearly when there is none or (with `complete`) when the
    writer has not finished."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not an activation cache: it holds no {MANIFEST}; write one with "
                                f"`python -m kit cache --preset NAME --tokens N --out {path}`")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); delete the folder and write the cache again") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"cache {path} has format {manifest.get('format')!r}, this kit reads format {FORMAT}: "
                         "write it again with this kit's `python -m kit cache`")
    if complete and not manifest.get("complete"):
        raise ValueError(f"cache {path} was not finished writing: rerun the same `python -m kit cache` command to "
                         "resume it")
    return manifest


def check_shards(path, manifest: dict, rank: int | None = None) -> None:
    """Every shard the manifest lists (of `rank`, or all) is there with its byte size."""
    for entry in manifest["shards"]:
        if rank is not None and entry["rank"] != rank:
            continue
        file = Path(path) / entry["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != entry["bytes"]:
            found = "missing" if size is None else f"{size:,} bytes, the manifest says {entry['bytes']:,}"
            raise ValueError(f"cache {path} is damaged: {entry['file']} is {found}; delete the folder and write "
                             "the cache again")


def check_world(path, manifest: dict, world: int) -> None:
    """A cache is read with the world size that wrote it: each rank reads its own stream's shards."""
    if manifest["world"] != world:
        raise ValueError(f"cache {path} was written by {manifest['world']} rank(s) and this run has {world}: each "
                         f"rank reads the shards of its own stream, so train with {manifest['world']} rank(s) "
                         f"(torchrun --nproc_per_node {manifest['world']}), or write a cache with {world}")
