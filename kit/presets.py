"""The named presets, values of `kit.config.RunConfig`: smoke, cpu and gemma-2-2b-l8."""
from __future__ import annotations

import os
from pathlib import Path

from kit.config import CollectorConfig, RunConfig, StoreConfig, TrainConfig, TranscoderConfig


SMOKE = RunConfig(
    name="smoke",
    latents=TranscoderConfig(d_latent=4608, activation="topk", k=32),
    store=StoreConfig(ctx_len=64, batch_size=1024, refill_contexts=128, shuffle_contexts=1024, lm_batch=32,
                      holdout_contexts=320, autocast=True),
    train=TrainConfig(steps=160, lr=3e-3, checkpoint_every=40, log_every=10, dead_window=100_000),
    collector=CollectorConfig(ctx_len=64, k=16, window_before=24, window_after=8),
    eval_contexts=96,
)

CPU = RunConfig(
    name="cpu",
    latents=TranscoderConfig(d_latent=9216, activation="topk", k=32),
    store=StoreConfig(ctx_len=128, batch_size=4096, refill_contexts=256, shuffle_contexts=2048, lm_batch=32,
                      holdout_contexts=640, autocast=True),
    train=TrainConfig(steps=400, lr=1e-3, checkpoint_every=50, log_every=20, dead_window=500_000),
    collector=CollectorConfig(ctx_len=128, k=20, window_before=32, window_after=8),
    eval_contexts=160,
)

# The GPU target: Gemma Scope's width_16k shape at layer 8, bf16 model, streamed Pile with its domain labels.
# Token budget: 30,000 steps x 8,192 tokens = 246M tokens (Gemma Scope trained its 16k transcoders on more;
# this is a budget one H100 runs in a few hours).
GEMMA_2_2B_L8 = RunConfig(
    name="gemma-2-2b-l8",
    model="google/gemma-2-2b",
    source="monology/pile-uncopyrighted",
    model_dtype="bfloat16",
    latents=TranscoderConfig(d_latent=16384, activation="topk", k=64),
    store=StoreConfig(ctx_len=1024, batch_size=8192, refill_contexts=64, shuffle_contexts=2048, lm_batch=16,
                      holdout_contexts=256, dtype="bfloat16", domain_field="meta.pile_set_name"),
    train=TrainConfig(steps=30_000, lr=2e-4, checkpoint_every=1000, log_every=50, dead_window=10_000_000),
    collector=CollectorConfig(ctx_len=1024, k=32, window_before=48, window_after=16),
    eval_contexts=256,
)

PRESETS = {p.name: p for p in (SMOKE, CPU, GEMMA_2_2B_L8)}


def get_preset(name: str) -> RunConfig:
    """A preset by name; the error lists the names that exist."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def run_dir(name: str) -> Path:
    """Where a run of this preset lives: $KIT_RUN_DIR, else runs/<name> at the repository root (or here)."""
    if os.environ.get("KIT_RUN_DIR"):
        return Path(os.environ["KIT_RUN_DIR"])
    here = Path.cwd()
    root = here.parent if here.name == "notebooks" else here
    return root / "runs" / name
