"""Learning-rate schedule (linear warmup, then decay) and the sparsity-coefficient warmup."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

DECAYS = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class ScheduleConfig:
    total_steps: int
    """Optimizer steps in the whole run."""
    lr: float = 3e-4
    """Peak learning rate; Gao et al. 2024 §A.1 scale 2e-4 * sqrt(2**14 / d_latent), ~2.7e-4 at 9,216."""
    warmup_steps: int | None = None
    """Steps of linear warmup from lr/warmup_steps to lr; None means 5% of total_steps."""
    decay: str = "cosine"
    """Shape of the decay after warmup: linear, cosine or constant."""
    min_lr_ratio: float = 0.1
    """Floor of the decay as a fraction of lr, reached at total_steps."""
    sparsity_warmup_steps: int | None = None
    """Steps over which the sparsity coefficient rises linearly from 0 to 1; None means 5% of total_steps."""

    @classmethod
    def of(cls, train) -> ScheduleConfig:
        """The schedule of a `kit.config.TrainConfig`."""
        return cls(train.steps, train.lr, train.warmup_steps, train.decay, train.min_lr_ratio,
                   train.sparsity_warmup_steps)

    def __post_init__(self):
        steps = self.total_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {self.total_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for name in ("warmup_steps", "sparsity_warmup_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= self.total_steps):
                raise ValueError(f"{name} must be None or an int in [0, total_steps={self.total_steps}], "
                                 f"got {value!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")

    @property
    def n_warmup(self) -> int:
        """warmup_steps with None resolved to 5% of total_steps."""
        return round(0.05 * self.total_steps) if self.warmup_steps is None else self.warmup_steps

    @property
    def n_sparsity_warmup(self) -> int:
        """sparsity_warmup_steps with None resolved to 5% of total_steps."""
        if self.sparsity_warmup_steps is None:
            return round(0.05 * self.total_steps)
        return self.sparsity_warmup_steps


def lr_multiplier(step: int, cfg: ScheduleConfig) -> float:
    """Factor on cfg.lr for the optimizer step with index step (0-based).

    Warmup: (step + 1) / n_warmup, so step 0 already moves and step n_warmup - 1 reaches 1.
    Decay: from 1 at step n_warmup to min_lr_ratio at step total_steps (and after it).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = cfg.n_warmup
    if step < warmup:
        return (step + 1) / warmup
    span = cfg.total_steps - warmup
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
    floor = cfg.min_lr_ratio
    if cfg.decay == "constant":
        return 1.0
    if cfg.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sparsity_multiplier(step: int, cfg: ScheduleConfig) -> float:
    """Factor on the sparsity coefficient: step / n_sparsity_warmup up to 1 (Conerly et al. 2024)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = cfg.n_sparsity_warmup
    return 1.0 if step >= warmup else step / warmup


def make_scheduler(optimizer: torch.optim.Optimizer,
                   cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR that sets lr = cfg.lr * lr_multiplier(step); call scheduler.step() after optimizer.step().

    Build the optimizer with lr=cfg.lr: LambdaLR multiplies each group's initial lr. A group may carry an
    "lr_scale" key, and then its lr is cfg.lr * lr_scale.
    """
    for group in optimizer.param_groups:
        initial, want = group.get("initial_lr", group["lr"]), cfg.lr * group.get("lr_scale", 1)
        if not math.isclose(initial, want):
            raise ValueError(f"optimizer lr {initial} differs from ScheduleConfig.lr {cfg.lr} times the group's "
                             f"lr_scale {group.get('lr_scale', 1)}; build the optimizer with lr=cfg.lr")
    # A partial (not a lambda) so that scheduler.state_dict() stays picklable.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_multiplier, cfg=cfg))
