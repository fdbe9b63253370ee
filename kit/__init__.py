"""transcoder kit: train transcoders on real language models and read what their latents learned."""
from importlib import import_module

__version__ = "0.1.0"

# Lazy attribute access keeps `import kit` cheap (no torch/transformers import until used).
_EXPORTS = {
    "load_model": "kit.lm.models",
    "TranscoderActivationsStore": "kit.lm.store",
    "CachedActivationsStore": "kit.lm.cached_store",
    "Transcoder": "kit.model.transcoder",
    "TranscoderConfig": "kit.config",
    "TopKCollector": "kit.collect.collector",
    "Trainer": "kit.train.trainer",
    "RunConfig": "kit.config",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kit' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
