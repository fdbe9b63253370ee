"""Where a transcoder reads its input and its target, one small function per architecture family."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HookPoints:
    """Module paths (dotted, from the model root) of the tensors a transcoder at one layer uses."""

    layer: int
    """The decoder block index; the forward pass can stop once this block's MLP has run."""
    in_path: str
    """Module whose `in_from` tensor is the transcoder input."""
    in_from: str
    """'input' (first positional argument) or 'output' of `in_path`."""
    out_path: str
    """Module whose output is the MLP block's contribution to the residual stream: the target, and what a
    spliced evaluation replaces."""
    final_norm: str = "model.norm"
    """The norm before the unembedding: its output is the final hidden state."""
    rms_eps: float | None = None
    """If set, the input is RMS-normalized with this epsilon before use (Gemma Scope's convention)."""
    norm_gain_offset: float = 0.0
    """The final norm multiplies by (offset + weight): 1 for Gemma's RMSNorm, 0 for Llama's and GPT-2's."""
    norm_centres: bool = False
    """The final norm subtracts the mean first (GPT-2's LayerNorm)."""

    def transform_input(self, raw_BTD: torch.Tensor) -> torch.Tensor:
        """Turn the raw tensor read at `in_path` into the transcoder input."""
        if self.rms_eps is None:
            return raw_BTD
        x = raw_BTD.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.rms_eps)


def _llama(model, layer: int) -> HookPoints:
    # Llama/SmolLM2/Mistral/Qwen2: the block computes h + mlp(post_attention_layernorm(h)).
    base = f"model.layers.{layer}.mlp"
    return HookPoints(layer, base, "input", base)


def _gemma2(model, layer: int) -> HookPoints:
    # Gemma Scope transcoders read the MLP input after RMS normalization but before the (1 + w) gain,
    # and predict the MLP block's output after post_feedforward_layernorm (Gemma Scope tech report, sec. 3).
    # We read the norm's *input* and normalize it ourselves instead of dividing its output by (1 + w),
    # which is the same tensor without the precision loss of a division by a gain that can be near zero.
    base = f"model.layers.{layer}"
    eps = model.model.layers[layer].pre_feedforward_layernorm.eps
    return HookPoints(layer, f"{base}.pre_feedforward_layernorm", "input",
                      f"{base}.post_feedforward_layernorm", rms_eps=eps, norm_gain_offset=1.0)


def _gpt2(model, layer: int) -> HookPoints:
    # GPT-2: the block computes h + mlp(ln_2(h)).
    base = f"transformer.h.{layer}.mlp"
    return HookPoints(layer, base, "input", base, final_norm="transformer.ln_f", norm_centres=True)


FAMILIES = {"llama": _llama, "mistral": _llama, "qwen2": _llama, "gemma2": _gemma2, "gpt2": _gpt2}


def n_layers(model) -> int:
    """Number of decoder blocks of a transformers causal LM."""
    config = model.config
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def hook_points(model, layer: int) -> HookPoints:
    """The transcoder's input and target at `layer` for a transformers model of a supported family."""
    family = getattr(model.config, "model_type", type(model).__name__)
    if family not in FAMILIES:
        raise ValueError(f"unsupported architecture {family!r}: supported families are {sorted(FAMILIES)}")
    total = n_layers(model)
    if not isinstance(layer, int) or not 0 <= layer < total:
        raise ValueError(f"layer {layer!r} is out of range for this {family} model: valid layers are 0..{total - 1}")
    return FAMILIES[family](model, layer)


def get_module(root, path: str):
    """Follow a dotted path (integers index into ModuleLists) from a module or an nnsight Envoy."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def d_model(model) -> int:
    """Width of the residual stream (the transcoder's d_in and d_out)."""
    config = model.config
    return getattr(config, "hidden_size", None) or config.n_embd


def final_norm_gain(model, hooks: HookPoints) -> tuple[torch.Tensor, bool]:
    """`(gain_D, centre)` of the final norm: what the logit lens multiplies a direction by, and whether it
    centres it first."""
    weight = get_module(model, hooks.final_norm).weight
    return weight + hooks.norm_gain_offset if hooks.norm_gain_offset else weight, hooks.norm_centres
