"""Time a TopK transcoder train step against a bare matmul baseline of the same shapes.

TopK step: forward (sparse embedding_bag decoder) + MSE + backward + Adam step.
Baseline: x @ W_enc, then acts @ W_dec, with backward: the dense work any dictionary of this size does.
Also times the TopK step with a dense decoder, to show what the sparse decoder buys.

    python bench/transcoder_step.py [--batch 4096] [--steps 5]
"""
import argparse
import statistics
import time

import torch

from kit.loss import mse_loss
from kit.transcoder import Transcoder, TranscoderConfig


def seconds_per_step(step, n_steps: int, n_warmup: int = 2) -> float:
    for _ in range(n_warmup):
        step()
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def transcoder_step(model, optimizer, x_BD, y_BD, sparse: bool):
    def step():
        if sparse:
            y_hat_BD = model(x_BD).y_hat
        else:
            y_hat_BD = model.decode(model.encode(x_BD))
        mse_loss(y_hat_BD, y_BD).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def matmul_step(W_enc, W_dec, x_BD):
    def step():
        ((x_BD @ W_enc) @ W_dec).square().sum().backward()
        W_enc.grad = W_dec.grad = None
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = TranscoderConfig(d_in=576, d_out=576, d_latent=9216, activation="topk", k=32)
    x_BD, y_BD = torch.randn(args.batch, cfg.d_in), torch.randn(args.batch, cfg.d_out)
    model = Transcoder(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    W_enc = model.W_enc.detach().clone().requires_grad_()
    W_dec = model.W_dec.detach().clone().requires_grad_()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"d_in=d_out={cfg.d_in}, d_latent={cfg.d_latent}, k={cfg.k}")
    baseline = seconds_per_step(matmul_step(W_enc, W_dec, x_BD), args.steps)
    timings = {"bare matmul fwd+bwd": baseline}
    for name, sparse in (("TopK step, sparse decoder", True), ("TopK step, dense decoder", False)):
        timings[name] = seconds_per_step(transcoder_step(model, optimizer, x_BD, y_BD, sparse), args.steps)
    for name, seconds in timings.items():
        tokens_per_s, speedup = args.batch / seconds, baseline / seconds
        print(f"{name:28s} {tokens_per_s:10,.0f} tokens/s   {speedup:5.2f}x the baseline's speed")


if __name__ == "__main__":
    main()
