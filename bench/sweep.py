"""Sweep benchmark: four TopK transcoders fed from one store against four separate runs of the same steps.

    python bench/sweep.py [--steps 16] [--ks 16,32,64,128] [--skip-cache]

The `cpu` preset's shapes (SmolLM2-135M layer 8, 9,216 latents, batch 4,096, contexts of 128, the store under its
bf16 autocast). The store is first filled past its mixing prefill (the first batch reads `mix_refills` refills),
so both sides are timed in the steady state where every ~8 steps read one refill of 256 contexts.
- separate: for each k, `steps` steps of (store batch + train step + collector), as a run of its own would do;
- sweep: `steps` steps of (one store batch + the four train steps), as `python -m kit train --sweep` does.
Goal: separate time / sweep time ≥ 2.5. Then, unless --skip-cache, the cache benchmarks (bench/cache.py).
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from kit.collect.collector import TopKCollector
from kit.model.transcoder import Transcoder
from kit.presets import CPU
from kit.run import open_store
from kit.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def trainer_for(config, store, k: int) -> Trainer:
    torch.manual_seed(0)
    latents = dataclasses.replace(config.latents, d_in=store.d_in, d_out=store.d_out, k=k)
    tc = Transcoder(latents)
    return Trainer(tc, store, config.train, None, TopKCollector(latents.d_latent, config.collector, "cpu"))


def drain_prefill(store) -> None:
    """Hand out the first chunk: it holds ~(mix_refills + 1) / 2 refills read up front, so steps timed inside it
    would run no language model at all. After it every chunk is about one refill, read when it is loaded."""
    while store.state_dict()["chunk"] < store.config.mix_refills:
        store.get_batch_with_tokens()


def timed(store, trainers, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        batch = store.get_batch_with_tokens()
        for t in trainers:
            t.advance(batch)
    return time.perf_counter() - start


def sweep_ratio(steps: int, ks: list[int]) -> dict:
    config = CPU.override([f"train.steps={10 * steps}"])
    store = open_store(config, "cpu")
    trainers = {k: trainer_for(config, store, k) for k in ks}
    for t in trainers.values():  # step 0 (scales, b_dec) and the first compiled kernels, out of the timing
        t.advance(store.get_batch_with_tokens())
    drain_prefill(store)
    # the sweep is timed before and after the separate runs, and averaged, so a load that changes during the
    # benchmark (a shared machine) biases neither side
    first = timed(store, list(trainers.values()), steps)
    separate = {k: timed(store, [t], steps) for k, t in trainers.items()}
    together = (first + timed(store, list(trainers.values()), steps)) / 2
    tokens = steps * config.store.batch_size
    result = {"steps": steps, "tokens_per_point": tokens, "ks": ks,
              "separate_s": {str(k): round(v, 2) for k, v in separate.items()},
              "separate_total_s": round(sum(separate.values()), 2), "sweep_s": round(together, 2),
              "ratio": round(sum(separate.values()) / together, 3)}
    print(f"sweep of {len(ks)} TopK transcoders (k = {ks}, {config.latents.d_latent} latents, batch "
          f"{config.store.batch_size}, {steps} steps each after the store's prefill)")
    for k, s in separate.items():
        print(f"  separate run, k={k:<4}: {s:7.1f} s  ({tokens / s:6.0f} tokens/s)")
    print(f"  four separate runs  : {sum(separate.values()):7.1f} s")
    print(f"  one sweep           : {together:7.1f} s   ratio {result['ratio']:.2f}x (goal >= 2.5x; mean of "
          f"{first:.1f} s before and {2 * together - first:.1f} s after the separate runs)")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--ks", default="16,32,64,128")
    p.add_argument("--skip-cache", action="store_true", help="skip the cache benchmarks (bench/cache.py)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args()
    result = {"sweep": sweep_ratio(args.steps, [int(k) for k in args.ks.split(",")])}
    if not args.skip_cache:
        sys.path.insert(0, str(ROOT / "bench"))
        import cache
        result["cache"] = cache.main([])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
