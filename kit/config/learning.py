"""The learning-side sections of a run's config: the transcoder's shape and the optimisation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kit.config.fields import ConfigError, check_types

ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")
DTYPES = ("float32", "bfloat16", "float16", "float64")
AUTOCAST = ("auto", "on", "off")


@dataclass(frozen=True)
class TranscoderConfig:
    d_in: int | None = None
    """Width of the MLP input x; None in a RunConfig, where the model gives it."""
    d_out: int | None = None
    """Width of the MLP output y; None in a RunConfig, where the model gives it."""
    d_latent: int = 4608
    """Number of latents (the dictionary size)."""
    activation: str = "topk"
    """One of relu, topk, batchtopk, jumprelu."""
    k: int | None = None
    """Active latents per token (batchtopk: on average over the batch); None unless topk/batchtopk."""
    skip: bool = False
    """Add a linear skip term x @ W_skip, initialised to zero (skip transcoder, Paulo et al. 2025)."""
    jumprelu_threshold: float = 0.001
    """Initial JumpReLU threshold theta (Rajamanoharan et al. 2024 start at 0.001)."""
    jumprelu_bandwidth: float = 0.001
    """Width epsilon of the rectangle kernel in JumpReLU's straight-through estimator (paper: 0.001)."""
    dtype: str = "float32"
    """Parameter dtype: float32, bfloat16, float16 or float64."""

    def __post_init__(self):
        check_types(self)
        for name in ("d_in", "d_out", "d_latent"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"TranscoderConfig.{name} must be a positive int, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation in ("topk", "batchtopk"):
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_latent:
                raise ConfigError(f"activation={self.activation!r} needs k, an int in [1, d_latent="
                                 f"{self.d_latent}] (active latents per token, e.g. k=32); got k={self.k!r}")
        elif self.k is not None:
            raise ConfigError(f"k is only used by topk/batchtopk; "
                             f"set k=None for activation={self.activation!r}")
        for name in ("jumprelu_threshold", "jumprelu_bandwidth"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self):
        """The parameters' torch dtype."""
        import torch
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TranscoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown TranscoderConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    steps: int = 1000
    """Optimizer steps."""
    lr: float = 3e-4
    """Peak learning rate (Adam)."""
    warmup_steps: int | None = None
    """Linear warmup steps; None means 5% of steps."""
    decay: str = "cosine"
    """Decay after warmup: 'cosine', 'linear' or 'constant'."""
    min_lr_ratio: float = 0.1
    """The decay's floor as a fraction of lr."""
    sparsity_coeff: float = 0.0
    """L1 coefficient (relu) or L0 coefficient (jumprelu); unused by topk, whose k sets sparsity."""
    sparsity_warmup_steps: int | None = None
    """Steps over which the sparsity coefficient ramps up from 0; None means 5% of steps."""
    auxk_coeff: float = 1 / 32
    """Weight of the AuxK dead-latent loss for topk/batchtopk (Gao et al. 2024 use 1/32)."""
    k_aux: int = 256
    """Dead latents AuxK may use per token."""
    auxk_window: int | None = None
    """AuxK trains the latents that have not fired for this many tokens; None means dead_window."""
    auxk_reset_adam: bool = False
    """Zero a latent's Adam moments (its encoder column, bias and decoder row) when it joins AuxK's set: its
    second moment still remembers the large gradients it had while alive (beta2 = 0.999 remembers ~1,000 steps),
    which would scale AuxK's small gradients down to almost no update. Measured on the cpu preset (BENCHMARKS.md):
    it revives no more latents, and with auxk_window=16384 it gives a 7% lower held-out FVU but more dead latents."""
    auxk_max_latents: int = 1024
    """AuxK trains at most this many of them a step (those with the largest pre-activation in the batch), so its
    cost stays bounded when many are dead."""
    dead_window: int = 1_000_000
    """A latent that has not fired for this many tokens is dead (the dead fraction of the logs and metrics)."""
    center_input: bool = True
    """Train on centred inputs, x - mean(x) (the first batch's mean; `export()` folds it into b_enc, so the saved
    transcoder reads raw x). It changes no function the transcoder can represent, only how Adam moves it: SmolLM2's
    layer-8 MLP input has a mean of ~45% of a token's norm, and uncentred each step on an encoder column moves the
    latent's mean pre-activation hundreds of times further than its bias, which drove 22% of the cpu preset's
    latents dead (BENCHMARKS.md, dead latents). Centred, only b_enc moves it: see b_enc_lr_scale."""
    b_enc_lr_scale: float = 10.0
    """The encoder bias's learning rate as a multiple of lr. Adam moves every parameter by about lr a step, too
    slowly for a bias to make its latent selective within a run (centred, at 1x: 0% dead but FVU 5% worse on the cpu
    preset). 10x: 0.07% dead and a better FVU than uncentred; 30x starts to kill latents again, 100x kills 58%.
    Measured on SmolLM2 (cpu and smoke presets); the GPU preset was not measured."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    checkpoint_every: int = 100
    """Steps between atomic checkpoints."""
    collect_every: int = 1
    """Steps between top-k collector updates."""
    log_every: int = 10
    """Steps between history rows."""
    autocast: str = "auto"
    """bf16 autocast of the transcoder step (fp32 weights and Adam state): 'on', 'off', or 'auto' = on for CUDA
    and for a CPU with amx_bf16 (see kit.train.precision)."""

    def __post_init__(self):
        check_types(self)
        if self.steps < 1 or min(self.checkpoint_every, self.collect_every, self.log_every, self.k_aux) < 1:
            raise ConfigError(f"steps, checkpoint_every, collect_every, log_every and k_aux must be >= 1: {self}")
        if min(self.auxk_window or 1, self.auxk_max_latents) < 1:
            raise ConfigError(f"auxk_window and auxk_max_latents must be >= 1: {self}")
        if not self.b_enc_lr_scale > 0:
            raise ConfigError(f"b_enc_lr_scale must be > 0, got {self.b_enc_lr_scale!r}")
        if self.dead_window < 1 or self.grad_clip <= 0 or self.sparsity_coeff < 0 or self.auxk_coeff < 0:
            raise ConfigError(f"dead_window and grad_clip must be > 0, coefficients >= 0: {self}")
        if self.autocast not in AUTOCAST:
            raise ConfigError(f"TrainConfig.autocast must be one of {AUTOCAST}, got {self.autocast!r}")
