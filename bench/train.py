"""Training benchmarks, each as a ratio against a baseline measured in the same run.

    python bench/train.py [--steps 16] [--preset cpu] [--skip-step]

1. Train step (TopK, 9,216 latents, batch 4,096): tokens/s against a bare matmul of the same shapes
   (bench/transcoder_step.py).
2. End to end on the cpu preset's shapes (--preset): store (LM trace under the preset's autocast, shuffle) + train
   step + collector every step, timed after the store's mixing prefill, against a bare forward cut off after
   layer 8 on as many tokens, in float32 and under bf16 autocast. Goal: >= 0.6x the bf16 bare forward.
3. Quality of the cpu preset, read from runs/cpu/metrics.json when that run exists.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from kit.presets import get_preset
from kit.run import make_trainer, open_store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from store import bare_forward  # noqa: E402  (the same baseline as the store benchmark)
from sweep import drain_prefill  # noqa: E402


def bare_forward_tps(model, tokens, lm_batch: int, autocast: bool) -> float:
    """Tokens/s of plain forwards that stop after layer 8's MLP (bench/store.py's baseline)."""
    start = time.perf_counter()
    bare_forward(model, tokens, 8, lm_batch, autocast)
    return tokens.numel() / (time.perf_counter() - start)


def end_to_end(steps: int, preset: str = "cpu") -> dict:
    """Store + train step + collector every step, in the steady state (after the store's mixing prefill), against
    a bare forward cut after layer 8 on as many tokens, in float32 and under bf16 autocast, same process."""
    config = get_preset(preset).override([f"train.steps={10 * steps}", "train.checkpoint_every=1000000000"])
    store = open_store(config, "cpu")
    trainer = make_trainer(config, store, Path(tempfile.mkdtemp()) / "e2e")
    trainer.advance(store.get_batch_with_tokens())  # step 0: scales, b_dec
    drain_prefill(store)  # the first chunk's refills were read up front: time the steady state
    n_ctx = steps * config.store.batch_size // (config.store.ctx_len - 1) + 1
    tokens = store.tokens_for_contexts(store.train_contexts(n_ctx, start=0))[0]
    bare_forward_tps(store.model, tokens[:32], config.store.lm_batch, True)  # warm up
    fp32 = bare_forward_tps(store.model, tokens, config.store.lm_batch, False)
    bf16 = bare_forward_tps(store.model, tokens, config.store.lm_batch, True)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.advance(store.get_batch_with_tokens())
    ours = steps * config.store.batch_size / (time.perf_counter() - start)
    print(f"end to end, {preset} preset shapes ({config.latents.d_latent} latents, k={config.latents.k}, batch "
          f"{config.store.batch_size}, ctx {config.store.ctx_len}, store autocast {config.store.autocast}, "
          f"{trainer.precision.describe()}; {steps} steps after the prefill, collector every step)")
    print(f"  kit store + train + collector : {ours:8.0f} tokens/s")
    print(f"  bare forward to layer 8, fp32 : {fp32:8.0f} tokens/s   ratio {ours / fp32:.2f}x")
    print(f"  bare forward to layer 8, bf16 : {bf16:8.0f} tokens/s   ratio {ours / bf16:.2f}x (goal >= 0.6x)")
    return {"kit": ours, "bare_fp32": fp32, "bare_bf16": bf16, "ratio_bf16": ours / bf16, "ratio_fp32": ours / fp32}


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
    p.add_argument("--steps", type=int, default=16, help="timed steps (16 x 4,096 tokens = two refills)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--skip-step", action="store_true", help="skip the train-step micro-benchmark")
    args = p.parse_args()
    if not args.skip_step:
        import subprocess
        subprocess.run([sys.executable, str(ROOT / "bench" / "transcoder_step.py")], check=True)
    end_to_end(args.steps, args.preset)
    quality()


if __name__ == "__main__":
    main()
