"""The GPU benchmark: a Gemma-2-2B-shaped model read at layer 8 by the kit's store, training 16,384 TopK latents.

One prepared script for one card (under 5 minutes; goal: >= 100k tokens/s end to end on one H100). Nothing comes
from the hub: the model is built from a `Gemma2Config` with Gemma-2-2B's shape (random bf16 weights, eager
attention) and the text is random token ids, fed as pre-tokenized records (`input_ids`), so no tokenizer is needed.
Settings are the `gemma-2-2b-l8` preset's (ctx 1,024, batch 8,192, k = 64, collector every step), with one
held-out context (the least a RunConfig allows), no evaluation and no checkpoints. Prints one JSON object on
stdout (everything else goes to stderr): store tokens/s (batches alone, LM refills included), train-step tokens/s
(`Trainer.train_step` on batches already on the card), end-to-end tokens/s (`Trainer.fit`: store + step +
collector), peak memory, the memory plan's rows for the same RunConfig (`kit.memory.memory_plan`), the card.

    python bench/gpu.py [--steps 64]     # on a CUDA machine
    python bench/gpu.py --tiny           # a tiny Gemma-2 on the CPU, in seconds (tests/test_bench_gpu.py)
"""
import argparse
import contextlib
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not
from kit.collect.collector import TopKCollector  # noqa: E402
from kit.lm.store import TranscoderActivationsStore  # noqa: E402
from kit.memory import GiB, memory_plan  # noqa: E402
from kit.model.transcoder import Transcoder  # noqa: E402
from kit.presets import GEMMA_2_2B_L8  # noqa: E402
from kit.train.trainer import Trainer  # noqa: E402

GEMMA_2_2B = dict(vocab_size=256_000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                  sliding_window=4096)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=10, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=64)
TINY_RUN = ["model_dtype=float32", "store.dtype=float32", "latents.d_latent=256", "latents.k=8", "store.ctx_len=128",
            "store.batch_size=512", "store.refill_contexts=8", "store.lm_batch=4", "store.shuffle_contexts=64",
            "collector.ctx_len=128", "collector.k=4", "collector.window_before=12", "collector.window_after=4"]
PLAN_NOT_TIMED = ("evaluation peak", "final-pass input cache")
"""Memory plan rows this benchmark never exercises (it runs no evaluation and no final pass)."""


class IdsOnly:
    """What the store asks of a tokenizer when every record carries `input_ids`: Gemma's BOS and pad ids."""

    bos_token_id, eos_token_id, pad_token_id = 2, 1, 0

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))


def build_model(shape: dict, dtype: torch.dtype, device: str):
    """A Gemma-2 causal LM with random weights, built on `device` (no hub, no weights on disk), in eval mode."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    config = Gemma2Config(**shape, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        # eager attention, as kit.lm.models loads Gemma-2: its logit soft-capping is not in the SDPA path
        model = Gemma2ForCausalLM._from_config(config, dtype=dtype, attn_implementation="eager")
    return model.eval().requires_grad_(False)


def random_documents(vocab: int, tokens: int, seed: int = 0):
    """Pre-tokenized records of 200 to 3,000 random ids (no special ids), as a datasets.Dataset."""
    import datasets
    gen = torch.Generator().manual_seed(seed)
    records, total = [], 0
    while total < tokens:
        n = int(torch.randint(200, 3000, (1,), generator=gen))
        ids = torch.randint(4, vocab, (n,), generator=gen).tolist()
        records.append({"text": "", "input_ids": ids, "meta": {"pile_set_name": "random ids"}})
        total += n
    return datasets.Dataset.from_list(records)


def run_config(tiny: bool, steps: int, folder: Path):
    """The `gemma-2-2b-l8` RunConfig this benchmark runs (for the tiny model: its shape, from a saved config)."""
    overrides = ["store.holdout_contexts=1", "eval_contexts=1", f"train.steps={steps}",
                 f"train.checkpoint_every={steps + 1}"]
    if tiny:
        from transformers import Gemma2Config
        Gemma2Config(**TINY).save_pretrained(folder)  # config.json only: memory_plan reads the shape from it
        overrides += [f"model={folder}", *TINY_RUN]
    return GEMMA_2_2B_L8.override(overrides)


def synced(device: str) -> float:
    """perf_counter after the card has finished its queued work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def build(config, device: str):
    """The model, store, transcoder, collector and trainer of `config` on `device` (as kit.run.prepare builds them)."""
    shape = TINY if config.model != GEMMA_2_2B_L8.model else GEMMA_2_2B
    model = build_model(shape, getattr(torch, config.model_dtype), device)
    tokens = (config.train.steps + 8 * config.store.mix_refills) * config.store.batch_size
    docs = random_documents(shape["vocab_size"], min(tokens, 3_000_000))
    store = TranscoderActivationsStore(model, docs, config.layer, tokenizer=IdsOnly(), config=config.store)
    tc = Transcoder(dataclasses.replace(config.latents, d_in=store.d_in, d_out=store.d_out)).to(device)
    collector = TopKCollector(tc.cfg.d_latent, config.collector, device)
    return Trainer(tc, store, config.train, None, collector)


def measure(trainer, device: str, store_batches: int, step_batches: int) -> dict:
    """Tokens/s of the store alone, of train_step alone, and of fit (store + step + collector) to cfg.steps."""
    B = trainer.store.config.batch_size
    trainer.fit(stop_at=2, progress=False)  # warm-up: the first refills, step 0's scales and b_dec
    start = synced(device)
    batches = [trainer.store.get_batch_with_tokens() for _ in range(store_batches)]
    store_s = synced(device) - start
    start = synced(device)
    for i in range(step_batches):
        batch = batches[i % len(batches)]
        trainer.train_step(batch.x_in, batch.y_out, trainer.step + i)
    step_s = synced(device) - start
    del batches
    end_to_end_steps = trainer.cfg.steps - trainer.step
    start = synced(device)
    trainer.fit(progress=False)
    e2e_s = synced(device) - start
    return {"store_tokens_per_s": store_batches * B / store_s, "train_step_tokens_per_s": step_batches * B / step_s,
            "end_to_end_tokens_per_s": end_to_end_steps * B / e2e_s, "end_to_end_steps": end_to_end_steps}


def memory(config, device: str) -> dict:
    """Measured peak memory and the memory plan's prediction for the same RunConfig."""
    if device.startswith("cuda"):
        peak, source = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        peak, source, total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (process)", None
    plan = memory_plan(config, total)
    rows = {r.name: round(r.bytes / GiB, 3) for r in plan.rows}
    timed = sum(r.bytes for r in plan.rows if r.name not in PLAN_NOT_TIMED)
    return {"peak_memory_gib": round(peak / GiB, 3), "peak_memory_source": source,
            "memory_plan_gib": rows, "memory_plan_total_gib": round(plan.total / GiB, 3),
            "memory_plan_without_evaluation_gib": round(timed / GiB, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny Gemma-2 on the CPU (seconds)")
    p.add_argument("--steps", type=int, default=None, help="end-to-end steps (default 64; --tiny 8)")
    args = p.parse_args()
    device = "cpu" if args.tiny else "cuda"
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device; run with --tiny for the CPU check")
    steps = args.steps or (8 if args.tiny else 64)
    if args.tiny:  # a check of the path, not a measurement: ops this small lose more to thread hand-offs than
        torch.set_num_threads(1)  # they gain (60x slower with 2 threads on a loaded 2-core machine)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
        config = run_config(args.tiny, steps + 2, Path(folder))
        trainer = build(config, device)
        result = measure(trainer, device, store_batches=8 if args.tiny else 24, step_batches=8 if args.tiny else 32)
        result.update(memory(config, device))
    card = torch.cuda.get_device_name(torch.device(device)) if device == "cuda" else "cpu (--tiny)"
    print(json.dumps({"card": card, "device": device, "tiny": args.tiny, "layer": config.layer,
                      "latents": config.latents.d_latent, "k": config.latents.k, "batch": config.store.batch_size,
                      "ctx_len": config.store.ctx_len, "precision": trainer.precision.describe(), **result,
                      "end_to_end_goal_tokens_per_s": 100_000, "seconds": round(time.perf_counter() - begin, 1)}))


if __name__ == "__main__":
    main()
