"""Time a TopK transcoder train step against a bare matmul baseline of the same shapes, and the top-k's share of it.

TopK step: forward (sparse embedding_bag decoder) + MSE + backward + Adam step, in float32 with the kit's top-k,
in float32 with plain torch.topk, under bf16 autocast (fp32 weights and Adam state), and with a dense decoder.
Baseline: x @ W_enc, then acts @ W_dec, with backward: the dense work any dictionary of this size does.
Top-k share: torch.topk and the kit's `topk` over the step's [batch, latents] float32 pre-activations, against the
float32 step that uses each.
With --preset-steps N: a preset (default cpu) trained N steps with train.autocast off and on, interleaved step by
step on the same data from the same start, and each one's held-out FVU and tokens/s (train step; end to end).

    python bench/transcoder_step.py [--batch 4096] [--steps 5] [--latents 9216] [--k 32]
    python bench/transcoder_step.py --preset-steps 60 [--preset cpu]
"""
import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kit.config import TranscoderConfig
from kit.model import topk_encoder
from kit.model.loss import fvu, mse_loss
from kit.model.transcoder import Transcoder


def seconds_per_step(step, n_steps: int, n_warmup: int = 2) -> float:
    for _ in range(n_warmup):
        step()
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_topk(pre_BL, k):
    return pre_BL.topk(k, dim=1, sorted=False)


def transcoder_step(model, optimizer, x_BD, y_BD, sparse: bool = True, bf16: bool = False, select=None):
    def step():
        with contextlib.ExitStack() as stack:
            if select is not None:  # swap the encoder's top-k (the "before" of the top-k change)
                stack.enter_context(swapped(topk_encoder, "topk", select))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y_hat_BD = model(x_BD).y_hat if sparse else model.decode(model.encode(x_BD))
                loss = mse_loss(y_hat_BD, y_BD)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@contextlib.contextmanager
def swapped(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def matmul_step(W_enc, W_dec, x_BD):
    def step():
        ((x_BD @ W_enc) @ W_dec).square().sum().backward()
        W_enc.grad = W_dec.grad = None
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--latents", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--preset-steps", type=int, default=0, help="compare autocast off/on on a preset instead")
    args = parser.parse_args()
    if args.preset_steps:
        return compare_autocast(args.preset, args.preset_steps)
    torch.manual_seed(0)
    cfg = TranscoderConfig(d_in=576, d_out=576, d_latent=args.latents, activation="topk", k=args.k)
    x_BD, y_BD = torch.randn(args.batch, cfg.d_in), torch.randn(args.batch, cfg.d_out)
    model = Transcoder(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    W_enc = model.W_enc.detach().clone().requires_grad_()
    W_dec = model.W_dec.detach().clone().requires_grad_()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"d_in=d_out={cfg.d_in}, d_latent={cfg.d_latent}, k={cfg.k}")
    baseline = seconds_per_step(matmul_step(W_enc, W_dec, x_BD), args.steps)
    timings = {"bare matmul fwd+bwd": baseline}
    variants = {"TopK step, float32": {}, "TopK step, fp32, torch.topk": {"select": torch_topk},
                "TopK step, bf16 autocast": {"bf16": True}, "TopK step, dense decoder": {"sparse": False}}
    for name, options in variants.items():
        timings[name] = seconds_per_step(transcoder_step(model, optimizer, x_BD, y_BD, **options), args.steps)
    for name, seconds in timings.items():
        tokens_per_s, speedup = args.batch / seconds, baseline / seconds
        print(f"{name:30s} {tokens_per_s:10,.0f} tokens/s   {speedup:5.2f}x the baseline's speed")
    topk_share(model, x_BD, args, timings)


def topk_share(model, x_BD, args, timings) -> None:
    """Print the top-k's time over the step's pre-activations, alone and as a share of the step that uses it."""
    with torch.no_grad():
        pre_BL = model._pre_acts(x_BD)
    torch_s = seconds_per_step(lambda: torch_topk(pre_BL, args.k), args.steps)
    kit_s = seconds_per_step(lambda: topk_encoder.topk(pre_BL, args.k), args.steps)
    same = torch.equal(torch_topk(pre_BL, args.k)[1].sort(1).values,
                       topk_encoder.topk(pre_BL, args.k)[1].sort(1).values)
    print(f"top-k over [{args.batch}, {args.latents}] float32, k={args.k} (same set: {same}):")
    print(f"  torch.topk   {torch_s * 1e3:8.1f} ms   {torch_s / timings['TopK step, fp32, torch.topk']:6.1%} of the "
          f"step that uses it")
    print(f"  kit topk     {kit_s * 1e3:8.1f} ms   {kit_s / timings['TopK step, float32']:6.1%} of the step that "
          f"uses it   ({torch_s / kit_s:.2f}x torch.topk's speed)")


def compare_autocast(preset: str, steps: int) -> None:
    """Train `preset` for `steps` steps with train.autocast off and on, step by step in turn (so load on a shared
    machine hits both), and print each one's held-out FVU and tokens/s."""
    from kit.lm.models import load_model
    from kit.presets import get_preset
    from kit.run import prepare
    base = get_preset(preset)
    model, tok = load_model(base.model, dtype=getattr(torch, base.model_dtype))
    trainers, clocks = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in ("off", "on"):
            config = base.override([f"train.steps={steps}", f"train.autocast={setting}"])
            trainers[setting] = prepare(config, Path(tmp) / setting, model=model, tokenizer=tok)
            trainers[setting].run_dir = None  # no checkpoints: fit(stop_at=...) would write one per call
            clocks[setting] = timed_steps(trainers[setting])
    for step in range(steps):
        for setting, trainer in trainers.items():
            start = time.perf_counter()
            trainer.fit(stop_at=step + 1, progress=False)
            clocks[setting]["fit"] += time.perf_counter() - start
    x_ND, y_ND = heldout(trainers["off"].store, base.eval_contexts)
    tokens = steps * base.store.batch_size
    print(f"{preset} preset, {steps} steps x {base.store.batch_size} tokens, same data and start; held-out FVU on "
          f"{len(y_ND):,} tokens of {base.eval_contexts} contexts")
    for setting, trainer in trainers.items():
        print(f"  autocast {setting:3s}: {trainer.precision.describe()}\n"
              f"      held-out FVU {heldout_fvu(trainer, x_ND, y_ND):.4f}   train step "
              f"{tokens / clocks[setting]['step']:7,.0f} tokens/s   end to end {tokens / clocks[setting]['fit']:7,.0f} "
              f"tokens/s")


def timed_steps(trainer) -> dict:
    """Wrap `trainer.train_step` so that its seconds add up in the returned dict's 'step'."""
    clock, step = {"step": 0.0, "fit": 0.0}, trainer.train_step

    def timed(*args):
        start = time.perf_counter()
        result = step(*args)
        clock["step"] += time.perf_counter() - start
        return result
    trainer.train_step = timed
    return clock


def heldout(store, n_contexts: int):
    x_NTD, y_NTD, mask_NT = store.activations_for_contexts(store.holdout_indices[:n_contexts])
    return x_NTD[mask_NT].float(), y_NTD[mask_NT].float()


@torch.no_grad()
def heldout_fvu(trainer, x_ND, y_ND) -> float:
    tc = trainer.export().eval()
    y_hat = torch.cat([tc(x).y_hat for x in x_ND.split(4096)])
    return fvu(y_ND, y_hat).item()


if __name__ == "__main__":
    main()
