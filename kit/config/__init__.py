"""One config: `RunConfig` and its sections, each a small frozen dataclass whose fields are typed and checked in
one place (`fields`). The base layer: it imports nothing else from the kit, and every stage may import it.
"""
from kit.config.fields import ConfigError
from kit.config.learning import ACTIVATIONS, TrainConfig, TranscoderConfig
from kit.config.run_config import SECTIONS, RunConfig, config_diff
from kit.config.sections import DENSE_RATE, LEVELS, CollectorConfig, SpecializationConfig, StoreConfig

__all__ = ["ACTIVATIONS", "DENSE_RATE", "LEVELS", "SECTIONS", "CollectorConfig", "ConfigError", "RunConfig",
           "SpecializationConfig", "StoreConfig", "TrainConfig", "TranscoderConfig", "config_diff"]
