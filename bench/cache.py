"""Activation-cache benchmarks, each a ratio against a baseline measured in the same run.

    python bench/cache.py [--preset cpu] [--refill-contexts 64] [--steps 8] [--repeats 2] [--json out.json]

(a) Writing (goal >= 0.85x): `write_cache` of the preset (its store settings, `refill_contexts` refills) against a
    bare forward cut after layer 8 by a plain hook (bench/store.py's `bare_forward`) on the same contexts, same
    lm_batch and autocast; tokens/s over the same positions. Reported twice: the whole call (identity checks,
    stream, plan, shards, sha256, manifest; the model passed in, so its load is not counted) and the shards alone
    (the whole call minus the same call stopped before its first shard).
(b) Training from the cache (goal >= 0.8x): `CachedActivationsStore.get_batch_with_tokens()` + `Trainer.train_step`
    against the same train step on one batch already in memory (no store), the preset's transcoder shapes (cpu:
    9,216 TopK latents, k = 32, batch 4,096, d = 576), steps interleaved so machine noise hits both.
(c) Disk bytes per token of a cache in each storage dtype: the shard files written, over the tokens they hold.
(d) The final pass's reads: `CachedActivationsStore.activations_for_contexts` (each context's rows sliced out of its
    shard) against the live store's (the language model) on the same trained contexts, in lm_batch chunks, the two
    interleaved chunk by chunk; a speed-up (live time / cached time), and whether they agree on every trained token.

`run(args)` returns the numbers as a dict (a sweep benchmark calls it); `main()` prints them.
"""
import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from kit.corpus.packing import stack_tokens
from kit.lm.cache import bytes_per_token, read_manifest
from kit.lm.cache_writer import write_cache
from kit.lm.cached_store import CachedActivationsStore
from kit.lm.models import load_model
from kit.lm.store import TranscoderActivationsStore
from kit.lm.stream import ContextStream
from kit.model.transcoder import Transcoder
from kit.presets import get_preset
from kit.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store import bare_forward  # noqa: E402  (the same baseline as the store benchmark)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--refill-contexts", type=int, default=64, help="store.refill_contexts (the preset's is 256)")
    p.add_argument("--steps", type=int, default=8, help="train steps timed in (b); the cache holds this many batches")
    p.add_argument("--repeats", type=int, default=2, help="best of this many writes and bare forwards in (a)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_write(config, model, tok, tmp: Path, tokens: int, repeats: int) -> dict:
    """(a): the write against a bare forward over the contexts of the refills it writes."""
    stream = ContextStream(config.source, tok, config.store)
    manifest = write_cache(config, tmp / "warm", tokens, model=model, tokenizer=tok, progress=False)
    refills = manifest["ranks"][0]["refills"]
    ids = [i for r in range(refills) for i in stream.refill_contexts(r)]
    tokens_NT = stack_tokens([stream.context_at(i) for i in ids])  # what the store runs, padding included
    positions = tokens_NT.numel()
    bare, whole, fixed = float("inf"), float("inf"), float("inf")
    for n in range(repeats):  # interleaved, so that load on a shared machine hits every side
        bare = min(bare, _best(lambda: bare_forward(model, tokens_NT, config.layer, config.store.lm_batch,
                                                    config.store.autocast), 1))
        out = tmp / f"write{n}"
        fixed = min(fixed, _best(lambda: write_cache(config, out, tokens, model=model, tokenizer=tok,
                                                     progress=False, stop_after=0), 1))
        shutil.rmtree(out)
        whole = min(whole, _best(lambda: write_cache(config, out, tokens, model=model, tokenizer=tok,
                                                     progress=False), 1))
    return {"positions": positions, "refills": refills, "bare_tps": positions / bare,
            "write_tps": positions / whole, "shards_tps": positions / (whole - fixed),
            "write_ratio": bare / whole, "shards_ratio": bare / (whole - fixed), "fixed_seconds": fixed}


def bench_train(config, cache: Path, steps: int) -> dict:
    """(b): cached batches + train step against the train step on an in-memory batch."""
    store = CachedActivationsStore(cache, config.store)
    trainers = []
    for _ in range(2):
        torch.manual_seed(0)
        tc = Transcoder(dataclasses.replace(config.latents, d_in=store.d_in, d_out=store.d_out))
        trainers.append(Trainer(tc, store, dataclasses.replace(config.train, steps=steps + 1)))
    cached, bare = trainers
    first = store.get_batch_with_tokens()
    for trainer in trainers:
        trainer.train_step(first.x_in, first.y_out, 0)  # step 0 sets the scales and b_dec: not timed
    x, y = first.x_in.clone(), first.y_out.clone()
    clock = {"cached": 0.0, "bare": 0.0}
    for step in range(1, steps):
        start = time.perf_counter()
        batch = store.get_batch_with_tokens()
        cached.train_step(batch.x_in, batch.y_out, step)
        clock["cached"] += time.perf_counter() - start
        start = time.perf_counter()
        bare.train_step(x, y, step)
        clock["bare"] += time.perf_counter() - start
    rows = (steps - 1) * config.store.batch_size
    return {"steps": steps - 1, "cached_tps": rows / clock["cached"], "bare_tps": rows / clock["bare"],
            "train_ratio": clock["bare"] / clock["cached"], "model_loaded": store.model_loaded,
            "resident_mib": store.resident_bytes() / 2**20}


def bench_final_reads(config, model, tok, cache: Path) -> dict:
    """(d): the final pass's activations of the cached training contexts, from the shards against the model."""
    cached = CachedActivationsStore(cache, config.store, tokenizer=tok)
    live = TranscoderActivationsStore(model, config.source, config.layer, tokenizer=tok, config=config.store)
    contexts = sorted(i for r in cached._shards for i in cached.stream.refill_contexts(r))
    clock, worst, tokens = {"cached": 0.0, "live": 0.0}, 0.0, 0
    for start in range(0, len(contexts), config.store.lm_batch):
        part = contexts[start:start + config.store.lm_batch]
        t0 = time.perf_counter()
        x, _, mask = cached.activations_for_contexts(part)
        t1 = time.perf_counter()
        lx, _, _ = live.activations_for_contexts(part)
        clock["cached"] += t1 - t0
        clock["live"] += time.perf_counter() - t1
        worst, tokens = max(worst, (x[mask] - lx[mask]).abs().max().item()), tokens + int(mask.sum())
    return {"contexts": len(contexts), "tokens": tokens, "cached_tps": tokens / clock["cached"],
            "live_tps": tokens / clock["live"], "speedup": clock["live"] / clock["cached"], "max_abs_diff": worst,
            "model_loaded": cached.model_loaded}


def bench_disk(config, model, tok, tmp: Path) -> dict:
    """(c): bytes per token of one small refill written in each storage dtype."""
    small = config.override(["store.refill_contexts=8", "store.mix_refills=1"])
    out = {}
    for dtype in ("float32", "bfloat16", "float16"):
        manifest = write_cache(small, tmp / f"disk-{dtype}", 1, dtype=dtype, model=model, tokenizer=tok,
                               progress=False)
        rows = sum(e["rows"] for e in manifest["shards"])
        out[dtype] = {"measured": sum(e["bytes"] for e in manifest["shards"]) / rows,
                      "formula": bytes_per_token(manifest["d_in"], manifest["d_out"], dtype)}
    return out


def run(args) -> dict:
    """All four benchmarks; the results as a dict."""
    base = get_preset(args.preset)
    config = base.override([f"store.refill_contexts={args.refill_contexts}",
                            f"store.shuffle_contexts={max(args.refill_contexts, 64)}"])
    model, tok = load_model(config.model, dtype=getattr(torch, config.model_dtype))
    tokens = args.steps * config.store.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write = bench_write(config, model, tok, tmp, tokens, args.repeats)
        train = bench_train(config, tmp / "warm", args.steps)
        disk = bench_disk(config, model, tok, tmp)
        reads = bench_final_reads(config, model, tok, tmp / "warm")
        shards = len(read_manifest(tmp / "warm")["shards"])
    return {"preset": args.preset, "threads": torch.get_num_threads(), "autocast": config.store.autocast,
            "refill_contexts": args.refill_contexts, "shards": shards, "write": write, "train": train, "disk": disk,
            "final_reads": reads,
            "latents": config.latents.d_latent, "k": config.latents.k, "batch": config.store.batch_size}


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    r = run(args)
    w, t = r["write"], r["train"]
    print(f"{r['preset']} preset, {r['threads']} threads, refill_contexts {r['refill_contexts']}, autocast "
          f"{r['autocast']}")
    print(f"(a) write {w['refills']} refills ({w['positions']:,} positions), best of {args.repeats}:")
    print(f"    bare forward cut after layer 8 : {w['bare_tps']:8.0f} tokens/s")
    print(f"    write_cache, whole call        : {w['write_tps']:8.0f} tokens/s   ratio {w['write_ratio']:.2f}x "
          f"(fixed part {w['fixed_seconds']:.1f} s)")
    print(f"    write_cache, shards alone      : {w['shards_tps']:8.0f} tokens/s   ratio {w['shards_ratio']:.2f}x "
          "(goal >= 0.85x)")
    print(f"(b) train from the cache, {r['latents']:,} TopK latents k={r['k']}, batch {r['batch']:,}, {t['steps']} "
          f"steps (model loaded: {t['model_loaded']}; {t['resident_mib']:.0f} MiB resident):")
    print(f"    bare train step, batch in memory : {t['bare_tps']:8.0f} tokens/s")
    print(f"    cached batches + train step      : {t['cached_tps']:8.0f} tokens/s   ratio {t['train_ratio']:.2f}x "
          "(goal >= 0.8x)")
    print("(c) disk bytes per token: " + ", ".join(f"{d} {v['measured']:,.0f} (formula {v['formula']:,})"
                                                     for d, v in r["disk"].items()))
    f = r["final_reads"]
    print(f"(d) the final pass's reads, {f['contexts']:,} trained contexts ({f['tokens']:,} tokens; model loaded by "
          f"the cached store: {f['model_loaded']}; largest difference {f['max_abs_diff']:.2g}):")
    print(f"    live store (the language model)  : {f['live_tps']:8.0f} tokens/s")
    print(f"    cached store (shard slices)      : {f['cached_tps']:8.0f} tokens/s   speed-up {f['speedup']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
