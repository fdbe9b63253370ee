"""RunConfig: everything one training run needs, as frozen sections; `config.json` in the run folder is this."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kit.config.fields import ConfigError, check_types, parse, require
from kit.config.learning import TrainConfig, TranscoderConfig
from kit.config.sections import CollectorConfig, SpecializationConfig, StoreConfig

SECTIONS = {"latents": TranscoderConfig, "store": StoreConfig, "train": TrainConfig, "collector": CollectorConfig,
            "analysis": SpecializationConfig}


@dataclass(frozen=True)
class RunConfig:
    """One run: which model, layer and text, and a section per stage. Change it with `override` or
    `dataclasses.replace`; every field of every section is also a `--set section.field=value`."""

    name: str
    """Preset name (it also names the default run folder)."""
    model: str = "embedded"
    """'embedded', a hub id or a local folder (see kit.lm.models.load_model)."""
    layer: int = 8
    """Decoder block whose MLP the transcoder replaces."""
    source: str = "embedded"
    """Text source: 'embedded', a hub dataset name or a local file/folder."""
    model_dtype: str = "float32"
    """Language-model weights dtype: float32, bfloat16 or float16."""
    latents: TranscoderConfig = field(default_factory=lambda: TranscoderConfig(k=32))
    """The transcoder (d_in and d_out stay None: the model gives them)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Activation store."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    collector: CollectorConfig = field(default_factory=lambda: CollectorConfig(ctx_len=128))
    """Top-k sample collection (its ctx_len follows store.ctx_len)."""
    analysis: SpecializationConfig = field(default_factory=SpecializationConfig)
    """Specialization thresholds of the interpretation."""
    eval_contexts: int = 64
    """Held-out contexts for the spliced-CE metrics (at most store.holdout_contexts)."""
    cache: str | None = None
    """A cache folder written by `python -m kit cache`; the run trains from it instead of running the model."""

    def __post_init__(self):
        check_types(self)
        require(self.layer >= 0, f"RunConfig.layer must be >= 0, got {self.layer}")
        require(self.model_dtype in ("float32", "bfloat16", "float16"),
                f"RunConfig.model_dtype must be float32, bfloat16 or float16, got {self.model_dtype!r}")
        require(1 <= self.eval_contexts <= self.store.holdout_contexts,
                f"eval_contexts={self.eval_contexts} must be in 1..store.holdout_contexts={self.store.holdout_contexts}")
        require(self.cache is None or self.cache.strip() != "",
                "cache must be a cache folder written by `python -m kit cache`, or None; got an empty string")
        require(self.collector.ctx_len == self.store.ctx_len,
                f"collector.ctx_len={self.collector.ctx_len} must equal store.ctx_len={self.store.ctx_len}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Rebuild from `to_dict()` (config.json); unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        require(not set(d) - known, f"config has unknown fields {sorted(set(d) - known)}; known: {sorted(known)}")
        subs = {}
        for name, section in SECTIONS.items():
            if name in d:
                require(isinstance(d[name], dict), f"{name} is a section: give its fields, e.g. {name}.<field>=...")
                fields = {f.name for f in dataclasses.fields(section)}
                bad = sorted(set(d[name]) - fields)
                require(not bad, f"section {name!r} has no field(s) {bad}; fields there: {sorted(fields)}")
                subs[name] = section(**d[name])
        return cls(**{**d, **subs})

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply `section.field=value` (or `field=value`) strings, each value parsed as its field's type; the
        result is checked once, after all of them (so `store.holdout_contexts` and `eval_contexts` can move
        together)."""
        d, explicit = self.to_dict(), set()
        for item in assignments:
            key, sep, raw = item.partition("=")
            require(bool(sep), f"override {item!r}: expected section.field=value, e.g. train.steps=100")
            section, _, name = key.strip().rpartition(".")
            if not section:
                if name in SECTIONS:
                    raise ConfigError(f"override {item!r}: {name} is a section; set one of its fields, e.g. "
                                      f"{name}.{dataclasses.fields(SECTIONS[name])[-1].name}=...")
                d[name] = parse(RunConfig, name, raw, f"override {item!r}: {name}")
                continue
            require(section in SECTIONS, f"override {item!r}: no section {section!r}; sections: {sorted(SECTIONS)}")
            d[section][name] = parse(SECTIONS[section], name, raw, f"override {item!r}: {section}.{name}")
            explicit.add((section, name))
        if ("collector", "ctx_len") not in explicit:  # the collector cuts windows from the store's contexts
            d["collector"]["ctx_len"] = d["store"]["ctx_len"]
        return RunConfig.from_dict(d)


LEGACY = {"train": {"center_input": False, "b_enc_lr_scale": 1.0}}
"""Fields added with a default other than the behaviour before them: a saved config that lacks one was trained the
old way, so it counts as this value, not the new default."""


def config_diff(saved: dict, current: dict, prefix: str = "", defaults: dict | None = None) -> list[str]:
    """`section.field: checkpoint X, now Y` for every difference; a field the saved config lacks (it was written
    before the field existed) counts as its LEGACY value, or else its default."""
    if defaults is None:
        defaults = RunConfig(name="").to_dict()
        for section, values in LEGACY.items():
            defaults[section] = {**defaults[section], **values}
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, defaults.get(key)), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = defaults.get(key)
            out += config_diff(a, b, f"{prefix}{key}.", sub if isinstance(sub, dict) else {})
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


__all__ = ["ConfigError", "LEGACY", "RunConfig", "SECTIONS", "config_diff"]
