"""Training benchmarks, each as a ratio against a baseline measured in the same run.

    python bench/train.py [--steps 24] [--skip-step]

1. Train step (TopK, 9,216 latents, batch 4,096): tokens/s against a bare matmul of the same shapes
   (bench/transcoder_step.py).
2. End to end on the smoke preset's shapes: store (LM trace under the preset's bf16 autocast, shuffle) + train
   step + collector every step, against a bare forward cut off after layer 8 on the same contexts, in float32 and
   under bf16 autocast.
3. Quality of the cpu preset, read from runs/cpu/metrics.json when that run exists.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from kit.presets import SMOKE
from kit.run import prepare

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from store import bare_forward  # noqa: E402  (the same baseline as the store benchmark)


def bare_forward_tps(model, tokens, lm_batch: int, autocast: bool) -> float:
    """Tokens/s of plain forwards that stop after layer 8's MLP (bench/store.py's baseline)."""
    start = time.perf_counter()
    bare_forward(model, tokens, 8, lm_batch, autocast)
    return tokens.numel() / (time.perf_counter() - start)


def end_to_end(steps: int) -> None:
    out = Path("/tmp/kit-bench-e2e")
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    config = SMOKE.override([f"train.steps={steps}", f"train.checkpoint_every={steps + 1}"])
    trainer = prepare(config, out)
    store = trainer.store
    n_ctx = steps * config.store.batch_size // (config.store.ctx_len - 1) + 1
    idx = store.train_contexts(n_ctx)
    tokens = store.tokens_for_contexts(idx)[0]
    bare_forward_tps(store.model, tokens[:32], config.store.lm_batch, True)  # warm up
    fp32 = bare_forward_tps(store.model, tokens, config.store.lm_batch, False)
    bf16 = bare_forward_tps(store.model, tokens, config.store.lm_batch, True)
    start = time.perf_counter()
    trainer.fit(progress=False)
    ours = steps * config.store.batch_size / (time.perf_counter() - start)
    print(f"end to end, smoke shapes ({config.latents.d_latent} latents, k={config.latents.k}, batch "
          f"{config.store.batch_size}, ctx {config.store.ctx_len}, {steps} steps, collector every step)")
    print(f"  kit store + train + collector : {ours:8.0f} tokens/s")
    print(f"  bare forward to layer 8, fp32 : {fp32:8.0f} tokens/s   ratio {ours / fp32:.2f}x")
    print(f"  bare forward to layer 8, bf16 : {bf16:8.0f} tokens/s   ratio {ours / bf16:.2f}x")


def quality() -> None:
    path = ROOT / "runs" / "cpu" / "metrics.json"
    if not path.exists():
        print("cpu preset quality: no runs/cpu/metrics.json (run `python -m kit train --preset cpu`)")
        return
    m = json.loads(path.read_text())
    print(f"cpu preset: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_frac']:.1%}, dense {m['dense_frac']:.1%}, "
          f"CE loss recovered {m['ce_loss_recovered']:.1%} (vs mean ablation {m['ce_loss_recovered_vs_mean']:.1%}), "
          f"ΔCE {m['delta_ce']:.3f}, KL {m['kl']:.3f}, top-k retention {m['topk_retention']:.1%}, tokens {m['tokens_seen']:,}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--skip-step", action="store_true", help="skip the train-step micro-benchmark")
    args = p.parse_args()
    if not args.skip_step:
        import subprocess
        subprocess.run([sys.executable, str(ROOT / "bench" / "transcoder_step.py")], check=True)
    end_to_end(args.steps)
    quality()


if __name__ == "__main__":
    main()
