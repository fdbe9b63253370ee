"""Store throughput against a bare transformers forward cut off after the same layer with plain hooks.

    python bench/store.py [--contexts 256] [--ctx-len 128] [--lm-batch 32] [--autocast]

Both sides run the same contexts, batch shape and layer in the same process; the ratio is store / bare.
"""
import argparse
import time

import torch

from kit.lm.models import load_model
from kit.lm.store import TranscoderActivationsStore
from kit.config import StoreConfig


class _Stop(Exception):
    pass


def bare_forward(model, tokens, layer, lm_batch, autocast):
    """Plain hooks on the MLP, raising after it to skip the later layers."""
    mlp = model.model.layers[layer].mlp
    out = []

    def hook(module, inputs, output):
        out.append((inputs[0], output))
        raise _Stop

    handle = mlp.register_forward_hook(hook)
    try:
        for start in range(0, len(tokens), lm_batch):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                try:
                    model(tokens[start:start + lm_batch])
                except _Stop:
                    pass
    finally:
        handle.remove()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, default=256)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--lm-batch", type=int, default=32)
    p.add_argument("--autocast", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    model, tok = load_model("embedded")
    cfg = StoreConfig(ctx_len=args.ctx_len, batch_size=4096, refill_contexts=args.contexts, lm_batch=args.lm_batch,
                      shuffle_contexts=args.contexts, holdout_contexts=0, autocast=args.autocast)
    store = TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, config=cfg)
    # The contexts of refill 0, in the order the store reads them: both sides run exactly these.
    idx = store.train_contexts(args.contexts)
    tokens = store.tokens_for_contexts(idx)[0]
    bare_forward(model, tokens[:args.lm_batch], 8, args.lm_batch, args.autocast)  # warm up
    best_bare, best_store = float("inf"), float("inf")
    for r in range(args.repeats):  # interleave the two sides so that machine noise hits both
        t = time.perf_counter()
        bare_forward(model, tokens, 8, args.lm_batch, args.autocast)
        best_bare = min(best_bare, time.perf_counter() - t)
        t = time.perf_counter()
        x, y, mask = store.activations_for_contexts(idx)  # what a refill runs: the nnsight read, stopped after
        x[mask][torch.randperm(int(mask.sum()))], y[mask]     # the layer, then masking and a shuffle
        best_store = min(best_store, time.perf_counter() - t)
    # Same token count on both sides (BOS included), so the ratio is a pure time ratio.
    bare_tps, store_tps = tokens.numel() / best_bare, tokens.numel() / best_store
    print(f"bare forward cut after layer 8 : {bare_tps:8.0f} tokens/s          ")
    print(f"store refill (nnsight + shuffle): {store_tps:8.0f} tokens/s (same tokens)")
    print(f"ratio store / bare             : {store_tps / bare_tps:.2f}x  (autocast={args.autocast})")


if __name__ == "__main__":
    main()
