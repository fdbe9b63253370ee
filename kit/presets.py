"""Run settings (`RunConfig`) and the named presets: smoke, cpu and gemma-2-2b-l8."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kit.collector import CollectorConfig
from kit.store import StoreConfig
from kit.trainer import TrainConfig


@dataclass(frozen=True)
class LatentSpec:
    """The transcoder's shape and activation; d_in and d_out come from the model."""

    d_latent: int = 4608
    """Number of latents."""
    activation: str = "topk"
    """'relu', 'topk', 'batchtopk' or 'jumprelu'."""
    k: int | None = 32
    """Active latents per token for topk and batchtopk."""
    skip: bool = False
    """Add a linear skip connection (skip transcoder)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; `config.json` in the run folder is this, as JSON."""

    name: str
    """Preset name."""
    model: str = "embedded"
    """'embedded', a hub id or a local folder (see kit.load_model)."""
    layer: int = 8
    """Decoder block whose MLP the transcoder replaces."""
    source: str = "embedded"
    """Text source: 'embedded', a hub dataset name or a local file/folder."""
    model_dtype: str = "float32"
    """Language-model weights dtype."""
    latents: LatentSpec = field(default_factory=LatentSpec)
    """Transcoder shape."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Activation store settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""
    collector: CollectorConfig = field(default_factory=lambda: CollectorConfig(ctx_len=128))
    """Top-k sample collection settings."""
    eval_contexts: int = 64
    """Held-out contexts for the spliced-CE metrics (at most store.holdout_contexts; the specialization analysis
    and the frozen top-k pass use all held-out contexts)."""

    def __post_init__(self):
        if not 1 <= self.eval_contexts <= self.store.holdout_contexts:
            raise ValueError(f"eval_contexts={self.eval_contexts} must be in 1..store.holdout_contexts="
                             f"{self.store.holdout_contexts}")
        if self.collector.ctx_len != self.store.ctx_len:
            raise ValueError(f"collector.ctx_len={self.collector.ctx_len} must equal store.ctx_len={self.store.ctx_len}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        subs = {"latents": LatentSpec, "store": StoreConfig, "train": TrainConfig, "collector": CollectorConfig}
        return cls(**{k: subs[k](**v) if k in subs else v for k, v in d.items()})

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply `section.field=value` (or `field=value`) strings, values parsed as JSON when they parse."""
        d = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r}: expected section.field=value, e.g. train.steps=100")
            *path, last = key.split(".")
            target = d
            for part in path:
                target = target.get(part) if isinstance(target.get(part), dict) else None
                if target is None:
                    raise ValueError(f"override {item!r}: no section {part!r}; sections: {sorted(SECTIONS)}")
            if last not in target:
                raise ValueError(f"override {item!r}: no field {last!r}; fields there: {sorted(target)}")
            target[last] = _parse(raw)
        return RunConfig.from_dict(d)


SECTIONS = ("latents", "store", "train", "collector")


def _parse(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


SMOKE = RunConfig(
    name="smoke",
    latents=LatentSpec(d_latent=4608, activation="topk", k=32),
    store=StoreConfig(ctx_len=64, batch_size=1024, refill_contexts=128, shuffle_contexts=1024, lm_batch=32,
                      holdout_contexts=320, autocast=True),
    train=TrainConfig(steps=160, lr=3e-3, checkpoint_every=40, log_every=10, dead_window=100_000),
    collector=CollectorConfig(ctx_len=64, k=16, window_before=24, window_after=8),
    eval_contexts=96,
)

CPU = RunConfig(
    name="cpu",
    latents=LatentSpec(d_latent=9216, activation="topk", k=32),
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
    latents=LatentSpec(d_latent=16384, activation="topk", k=64),
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


def preset_from_env(default: str = "smoke") -> RunConfig:
    """The preset named by the KIT_PRESET environment variable (notebooks read it in their parameters cell)."""
    return get_preset(os.environ.get("KIT_PRESET", default))


def run_dir(name: str) -> Path:
    """Where a run of this preset lives: $KIT_RUN_DIR, else runs/<name> at the repository root (or here)."""
    if os.environ.get("KIT_RUN_DIR"):
        return Path(os.environ["KIT_RUN_DIR"])
    here = Path.cwd()
    root = here.parent if here.name == "notebooks" else here
    return root / "runs" / name
