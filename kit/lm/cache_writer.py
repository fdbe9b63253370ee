"""Write an activation cache (`python -m kit cache`): the live store's refills, shard by shard, resumable.

Each rank writes the refills of its own stream that the chunks handed out before `tokens / world` tokens need
(chunk t needs refills <= t), each one `store._refill_acts(r)` of a live store on the same config, so a
`CachedActivationsStore` hands out exactly the live store's batches. Every shard is written atomically (temporary
file, then rename); the manifest is written first with `complete: false` and the parameters, and rewritten by
rank 0 with `complete: true` and every rank's shards at the end. A rerun of the same command resumes at the
first missing shard; a rerun with other parameters into the same folder is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kit import distributed
from kit.config import RunConfig
from kit.corpus.records import check_source
from kit.io import atomic_write, write_json
from kit.lm.cache import (DTYPES, FORMAT, MANIFEST, bytes_per_token, differences, file_sha256, identity,
                          load_tokenizer, read_manifest, shard_file)
from kit.lm.models import check_model_name, load_model
from kit.lm.store import TranscoderActivationsStore
from kit.lm.stream import ContextStream


def covering_chunks(stream: ContextStream, tokens: int, progress: bool = False) -> tuple[int, int]:
    """`(last_chunk, covered)`: the chunks a store hands out, from its first (mix_refills - 1), until they hold
    at least `tokens` tokens, and how many they hold (text only: the model does not run)."""
    t, covered = stream.config.mix_refills - 1, 0
    with tqdm(total=tokens, desc="reading the text", unit="tok", disable=not progress) as bar:
        while covered < tokens:
            n = len(stream.chunk_rows(t)[0])
            covered, t = covered + n, t + 1
            bar.update(min(n, tokens - bar.n))
    return t - 1, covered


def parameters(config: RunConfig, tokenizer, dtype: str, tokens: int, world: int) -> dict:
    """The manifest's parameters: a rerun into the same folder must give the same ones."""
    return {"format": FORMAT, **identity(config, tokenizer), "dtype": dtype, "world": world,
            "tokens_requested": tokens, "lm_batch": config.store.lm_batch}


def write_cache(config: RunConfig, out, tokens: int, dtype: str | None = None, device: str | None = None,
                model=None, tokenizer=None, progress: bool = True, stop_after: int | None = None) -> dict | None:
    """Write (or resume) the cache of `tokens` training tokens (all ranks together) of `config` into `out`.

    `dtype` is the storage dtype (default `config.store.dtype`). Returns the complete manifest, or None when
    `stop_after` shards were written (a planned interruption, as a kill would leave it). Under torchrun every rank
    calls it: each writes its own shards and rank 0 the manifest."""
    rank, world = distributed.rank_world()
    dtype = dtype or config.store.dtype
    if dtype not in DTYPES:
        raise ValueError(f"storage dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive number of training tokens, got {tokens!r}")
    if config.cache is not None:
        raise ValueError(f"cache={config.cache!r} is a training setting (train from a cache); `python -m kit cache` "
                         "writes one: drop --set cache=...")
    out = Path(out)
    check_source(config.source)
    if model is None:
        check_model_name(config.model)
    tokenizer = tokenizer or load_tokenizer(config.model)
    params = parameters(config, tokenizer, dtype, tokens, world)
    done = _start(out, params, rank)
    if done is not None:
        return done
    store_config = dataclasses.replace(config.store, dtype=dtype)
    stream = ContextStream(config.source, tokenizer, store_config, (rank, world))
    last, covered = covering_chunks(stream, math.ceil(tokens / world), progress and rank == 0)
    rows = [len(stream.layout(r)) for r in range(last + 1)]
    missing = [r for r in range(last + 1) if not (out / shard_file(rank, r)).is_file()]
    _print_plan(out, params, distributed.gather_objects((rows, len(missing), covered)), rank)
    if missing:
        if model is None:
            device = device or distributed.default_device()
            model, _ = load_model(config.model, dtype=getattr(torch, config.model_dtype), device=device)
        store = TranscoderActivationsStore.on_stream(model, stream, config.layer, tokenizer)
        written = _write_shards(out, store, missing[:stop_after], progress and rank == 0)
        if stop_after is not None and stop_after < len(missing):
            return None
    else:
        written = {}
    entries = [{"rank": rank, "refill": r, "rows": rows[r], "file": shard_file(rank, r),
                "bytes": (out / shard_file(rank, r)).stat().st_size,
                "sha256": written.get(r) or file_sha256(out / shard_file(rank, r))} for r in range(last + 1)]
    mine = {"rank": rank, "refills": last + 1, "tokens": covered, "shards": entries,
            "domain_names": stream.domain_names}
    manifest = _finish(out, params, distributed.gather_objects(mine), rank)
    distributed.barrier()
    return manifest


def _start(out: Path, params: dict, rank: int) -> dict | None:
    """Check `out` against `params` on every rank; rank 0 writes the unfinished manifest. The finished
    manifest when there is nothing left to do."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write a cache into {out}: it is a file; choose another --out")
    existing = read_manifest(out, complete=False) if (out / MANIFEST).is_file() else None
    if existing is None and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}: write the cache into a new or empty "
                              "folder (--out)")
    if existing is not None:
        diff = differences(existing, params, ("there", "now"))
        if diff:
            raise ValueError(f"{out} holds a cache written with other parameters ({'; '.join(diff[:6])}): choose "
                             "another --out, or delete that folder to write this one")
        if existing.get("complete"):
            if rank == 0:
                print(f"cache {out} is complete ({existing['tokens']:,} tokens): nothing to do", flush=True)
            return existing
    distributed.barrier()  # every rank has checked before rank 0 touches the folder
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for tmp in out.glob(".shard-*.tmp"):  # left by a kill mid-write; no rank writes yet
            tmp.unlink()
        if existing is None:
            write_json(out / MANIFEST, {**params, "complete": False})
    distributed.barrier()
    return None


def _print_plan(out: Path, params: dict, ranks: list, rank: int) -> None:
    """One line: tokens asked for and covered, shards, bytes per token and in all, what is left to write."""
    if rank != 0:
        return
    per_token = bytes_per_token(params["d_in"], params["d_out"], params["dtype"])
    rows = sum(sum(r) for r, _, _ in ranks)
    print(f"cache plan: {params['tokens_requested']:,} training tokens over {params['world']} rank(s) "
          f"(the chunks written hand out {sum(c for _, _, c in ranks):,}); {sum(len(r) for r, _, _ in ranks)} shards, "
          f"one per rank and refill, holding {rows:,} tokens; {per_token:,} bytes per token on disk "
          f"({params['dtype']}), {size(rows * per_token)} in all; {sum(m for _, m, _ in ranks)} shards to write into "
          f"{out}", flush=True)


def size(n: float) -> str:
    """Bytes in MiB or GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _write_shards(out: Path, store: TranscoderActivationsStore, refills: list[int], progress: bool) -> dict:
    """Compute and write `refills` in order; a thread writes shard r while the model runs refill r + 1 (at most
    one shard waits). Returns each written shard's sha256."""
    hashes, pending = {}, None
    with ThreadPoolExecutor(max_workers=1) as pool:
        for r in tqdm(refills, desc=f"cache rank {store.rank}" if store.world > 1 else "cache", disable=not progress):
            tensors = _shard_tensors(store, r)
            if pending is not None:
                hashes.update(pending.result())
            pending = pool.submit(_save, out / shard_file(store.rank, r), store.rank, r, tensors)
        if pending is not None:
            hashes.update(pending.result())
    return hashes


def _shard_tensors(store: TranscoderActivationsStore, r: int) -> dict:
    """What shard r holds: the live store's refill r (then dropped from the store) and its layout."""
    x, y = store._refill_acts(r)
    store._acts.pop(r, None)
    layout = store.stream.layout(r)
    return {"x_in": x.contiguous().cpu(), "y_out": y.contiguous().cpu(), "token_ids": layout[:, 2].contiguous(),
            "global_ids": layout[:, 0] * store.config.ctx_len + layout[:, 1], "layout": layout.contiguous()}


def _save(path: Path, rank: int, r: int, tensors: dict) -> dict:
    """One shard as safetensors bytes, written atomically; `{r: sha256}` of those bytes."""
    from safetensors.torch import save
    # one metadata key: safetensors writes a metadata map in hash order, and a resumed write must give the same bytes
    meta = {"kit_cache": json.dumps({"format": FORMAT, "rank": rank, "refill": r}, sort_keys=True)}
    data = save(tensors, metadata=meta)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return {r: hashlib.sha256(data).hexdigest()}


def _finish(out: Path, params: dict, ranks: list, rank: int) -> dict:
    """The complete manifest (every rank's shards); rank 0 writes it."""
    names = max((r["domain_names"] for r in ranks), key=len)
    manifest = {**params, "complete": True, "tokens": sum(r["tokens"] for r in ranks),
                "tokens_per_rank": min(r["tokens"] for r in ranks), "domain_names": names,
                "ranks": [{k: r[k] for k in ("rank", "refills", "tokens")} for r in ranks],
                "shards": [e for r in ranks for e in r["shards"]]}
    if rank == 0:
        write_json(out / MANIFEST, manifest)
        print(f"wrote cache {out}: {manifest['tokens']:,} tokens in {len(manifest['shards'])} shards, "
              f"{size(sum(e['bytes'] for e in manifest['shards']))}", flush=True)
    return manifest
