"""The data-side sections of a run's config: the store, the top-k collector and the specialization analysis."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from kit.config.fields import ConfigError, check_types

LEVELS = ("document", "token")
DENSE_RATE = 0.1
"""A latent firing on more than this share of tokens is dense."""


@dataclass(frozen=True)
class StoreConfig:
    """How contexts are cut, held out, run through the model and shuffled."""

    ctx_len: int = 128
    """Tokens per context, BOS included."""
    batch_size: int = 4096
    """Tokens per training batch."""
    refill_contexts: int = 256
    """Contexts per refill: the language model runs on this many at a time (in lm_batch pieces)."""
    mix_refills: int = 4
    """Refills mixed into every batch: each refill's tokens are spread at random over this many chunks."""
    shuffle_contexts: int = 2048
    """Contexts read ahead and permuted before refills take them, so that a refill mixes many documents."""
    lm_batch: int = 32
    """Contexts per language-model forward pass."""
    pack: bool = True
    """Pack several BOS-separated documents into a context (no compute on padding); False pads each document."""
    holdout_contexts: int = 64
    """Held-out contexts, cut from whole documents drawn at random and never trained on (evaluation, analysis)."""
    holdout_share: float = 0.1
    """Share of documents drawn for the held-out set (those past what holdout_contexts needs are skipped)."""
    dtype: str = "float32"
    """Storage dtype of the activations ('float32', 'bfloat16' or 'float16')."""
    autocast: bool = False
    """Run the language model under bf16 autocast (about 2.5x faster on a CPU with AMX, ~1% activation error)."""
    seed: int = 0
    """Seed of the held-out draw and the shuffles."""
    min_tokens: int = 8
    """Document pieces shorter than this are not made into contexts."""
    text_field: str = "text"
    """Record field holding the text."""
    domain_field: str | None = None
    """Record field holding a domain label, if any (dotted paths such as 'meta.pile_set_name' work)."""

    def __post_init__(self):
        check_types(self)
        if self.ctx_len < 2 or min(self.batch_size, self.refill_contexts, self.shuffle_contexts, self.lm_batch,
                                   self.mix_refills) < 1:
            raise ConfigError(f"ctx_len must be >= 2 and batch_size, refill_contexts, mix_refills, shuffle_contexts, "
                             f"lm_batch >= 1, got {self}")
        if self.holdout_contexts < 0 or not 1 <= self.min_tokens < self.ctx_len:
            raise ConfigError(f"holdout_contexts must be >= 0 and 1 <= min_tokens < ctx_len, got {self}")
        if not 0 < self.holdout_share < 1:
            raise ConfigError(f"holdout_share must be in (0, 1), got {self.holdout_share}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r}: use 'float32', 'bfloat16' or 'float16'")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CollectorConfig:
    """What the collector keeps. How often the trainer calls `update` is the trainer's setting."""

    ctx_len: int
    """Tokens per context, BOS included: global_id = context_index * ctx_len + position."""
    k: int = 16
    """Top contexts kept per latent."""
    threshold: float = 0.0
    """Activations at or below this are never collected (NaN never is either)."""
    n_intervals: int = 5
    """Equal bins of activation / running max for interval samples; 0 turns interval samples off."""
    per_interval: int = 2
    """Interval samples kept per bin."""
    seed: int = 0
    """Seed of the context keys that pick the interval samples."""
    window_before: int = 32
    """Tokens before the top token in a sample's window (used when the samples get their provenance)."""
    window_after: int = 8
    """Tokens after the top token in a sample's window."""

    def __post_init__(self):
        check_types(self)
        ints = {n: getattr(self, n) for n in ("ctx_len", "k", "n_intervals", "per_interval", "seed",
                                              "window_before", "window_after")}
        if bad := {n: v for n, v in ints.items() if isinstance(v, bool) or not isinstance(v, int)}:
            raise ConfigError(f"these CollectorConfig fields must be ints: {bad}")
        if self.ctx_len < 2 or self.k < 1 or self.per_interval < 1:
            raise ConfigError(f"need ctx_len >= 2 (position 0 is BOS), k >= 1 and per_interval >= 1; got "
                             f"ctx_len={self.ctx_len}, k={self.k}, per_interval={self.per_interval}")
        if min(self.n_intervals, self.seed, self.window_before, self.window_after) < 0:
            raise ConfigError("n_intervals, seed, window_before and window_after must be >= 0")
        thr = self.threshold
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr < float("inf"):
            raise ConfigError(f"threshold must be a finite value >= 0 (intervals are bins between 0 and the "
                             f"max), got {self.threshold!r}")


@dataclass(frozen=True)
class SpecializationConfig:
    """Thresholds that sort latents into specialist, generalist, dead and dense."""

    level: str = "document"
    """Unit of the test, lift and share that classify: 'document' (default, see the module docstring) or 'token'."""
    alpha: float = 0.01
    """A specialist's Benjamini-Hochberg q-value must be below this."""
    min_lift: float = 2.0
    """A specialist's top domain holds at least this many times its base rate."""
    min_share: float = 0.5
    """A specialist's top domain holds at least this share of its firing units."""
    min_firing_documents: int = 5
    """A specialist fires in at least this many documents: with fewer, the G-test's chi-square approximation is
    poor and no domain preference can be shown."""
    dense_rate: float = DENSE_RATE
    """A latent firing on more than this share of tokens is dense; dense wins over specialist."""
    seed: int = 0
    """Seed of the shuffled-label null and (offset by RANDOM_NULL_SEED_OFFSET) of the random transcoder."""
    batch_contexts: int = 32
    """Contexts per language-model pass in `specialization_with_nulls`."""

    def __post_init__(self):
        check_types(self)
        if self.level not in LEVELS:
            raise ConfigError(f"level must be one of {LEVELS}, got {self.level!r}")
        if not (0 < self.alpha < 1 and 0 < self.min_share <= 1 and 0 < self.dense_rate <= 1 and self.min_lift > 0):
            raise ConfigError(f"need 0 < alpha < 1, 0 < min_share <= 1, 0 < dense_rate <= 1 and min_lift > 0: {self}")
        if min(self.min_firing_documents, self.seed) < 0 or self.batch_contexts < 1:
            raise ConfigError(f"need min_firing_documents >= 0, seed >= 0 and batch_contexts >= 1: {self}")
