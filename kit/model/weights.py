"""Transcoder weights on disk: `save`/`load` (config.json + model.safetensors, no pickle) and Gemma Scope's
published params.npz. Functions take the module class, so this file does not import the transcoder."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kit.config import TranscoderConfig
from kit.io import atomic_write


def save(module, path: str | os.PathLike) -> None:
    """Write path/model.safetensors, then path/config.json, each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in module.state_dict().items()}
    atomic_write(path / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    text = json.dumps(module.cfg.to_dict(), indent=2)
    atomic_write(path / "config.json", lambda tmp: tmp.write_text(text))

def load(cls, path: str | os.PathLike, device: str | torch.device | None = None,
         expect: TranscoderConfig | None = None):
    """Read what save wrote; with expect, raise ValueError unless the saved config equals it."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found; Transcoder.save(path) writes config.json "
                                    "and model.safetensors into the folder")
    cfg = TranscoderConfig.from_dict(json.loads((path / "config.json").read_text()))
    if expect is not None and cfg != expect:
        diffs = [f"{f.name}: saved {getattr(cfg, f.name)!r}, expected {getattr(expect, f.name)!r}"
                 for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(expect, f.name)]
        raise ValueError(f"{path} holds a transcoder with a different config: " + "; ".join(diffs))
    return _from_state(cls, cfg, load_file(str(path / "model.safetensors")), str(path), device)

def from_gemma_scope(cls, npz_path: str | os.PathLike, device: str | torch.device | None = None,
                     dtype: str = "float32"):
    """Load a Gemma Scope JumpReLU transcoder's params.npz (W_enc [d_in, L], W_dec [L, d_out],
    b_enc, b_dec, threshold; W_skip or Gemma Scope 2's affine_skip_connection [d_in, d_out])."""
    with np.load(npz_path, allow_pickle=False) as npz:
        params = {name: npz[name] for name in npz.files}
    if missing := sorted({"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(params)):
        raise ValueError(f"{npz_path} lacks Gemma Scope keys {missing}; it has {sorted(params)}")
    threshold = params.pop("threshold").astype(np.float64)
    if (threshold < 0).any():
        raise ValueError(f"{npz_path}: JumpReLU thresholds must be >= 0, found min {threshold.min()}")
    # log(0) is -inf; the smallest positive float keeps theta > 0 and changes no real activation.
    params["log_threshold"] = np.log(np.maximum(threshold, np.finfo(np.float32).tiny))
    skip_key = next((key for key in ("W_skip", "affine_skip_connection") if key in params), None)
    if skip_key is not None:
        params["W_skip"] = params.pop(skip_key)
    if params["W_enc"].ndim != 2 or params["W_dec"].ndim != 2:
        raise ValueError(f"{npz_path}: W_enc and W_dec must be 2-D, "
                         f"got {params['W_enc'].shape} and {params['W_dec'].shape}")
    (d_in, d_latent), d_out = params["W_enc"].shape, params["W_dec"].shape[1]
    cfg = TranscoderConfig(d_in, d_out, d_latent, activation="jumprelu",
                           skip=skip_key is not None, dtype=dtype)
    state = {name: torch.from_numpy(np.ascontiguousarray(a)).to(cfg.torch_dtype)
             for name, a in params.items()}
    return _from_state(cls, cfg, state, str(npz_path), device)

def _from_state(cls, cfg, state, source, device):
    with torch.device("meta"):
        model = cls(cfg)  # meta: skip the random init that the loaded weights replace
    want = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    got = {name: (tuple(t.shape), t.dtype) for name, t in state.items()}
    if want != got:
        diffs = [f"{n}: expected {want.get(n, 'absent')}, found {got.get(n, 'absent')}"
                 for n in sorted(set(want) | set(got)) if want.get(n) != got.get(n)]
        raise ValueError(f"{source}: weights do not match config {cfg}: " + "; ".join(diffs))
    model.load_state_dict(state, assign=True)
    return model if device is None else model.to(device)
