"""The one way the kit reads and patches a language model: nnsight traces over the hook table's paths.

`read_activations` reads (MLP input, MLP output) at one layer and stops the forward pass after that block;
`final_hidden` runs on to the final norm (never the unembedding, whose [tokens, vocabulary] logits are the
evaluation's memory peak) and, with `splice`, first replaces the MLP block's output at the masked positions.
"""
from __future__ import annotations

import weakref

import torch
from nnsight import NNsight

from kit.lm.hooks import HookPoints, get_module

_WRAPPED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def as_nnsight(model) -> NNsight:
    """`model` wrapped once in an nnsight Envoy (an Envoy is returned as is)."""
    if isinstance(model, NNsight):
        return model
    if model not in _WRAPPED:
        _WRAPPED[model] = NNsight(model)
    return _WRAPPED[model]


def _device(nn_model) -> torch.device:
    return next(nn_model._module.parameters()).device


def read_activations(model, hooks: HookPoints, tokens_BT: torch.Tensor, autocast: bool = False):
    """`(x_BTD, y_BTD)` at the hook points, read with a trace that stops after the MLP's block."""
    nn_model = as_nnsight(model)
    device = _device(nn_model)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        with nn_model.trace(tokens_BT.to(device)) as tracer:
            src = get_module(nn_model, hooks.in_path)
            raw = (src.input if hooks.in_from == "input" else src.output).save()
            y = get_module(nn_model, hooks.out_path).output.save()
            tracer.stop()  # later layers are wasted work
    return hooks.transform_input(raw), y


def final_hidden(model, hooks: HookPoints, ids_BT: torch.Tensor, splice=None, mask_BT=None,
                 chunk_tokens: int = 512) -> torch.Tensor:
    """[B, T, D] output of the final norm; with `splice`, the MLP block output at `mask_BT` is replaced by
    `splice(x_ND)` of the transcoder inputs there (applied `chunk_tokens` rows at a time)."""
    nn_model = as_nnsight(model)
    with nn_model.trace(ids_BT.to(_device(nn_model)), use_cache=False) as tracer:
        if splice is not None:
            src = get_module(nn_model, hooks.in_path)
            raw = src.input if hooks.in_from == "input" else src.output
            dst = get_module(nn_model, hooks.out_path)
            out = dst.output.clone()
            with torch.no_grad():  # the trace body may run in another thread, where grad mode is its own
                x_ND = hooks.transform_input(raw)[mask_BT]
                out[mask_BT] = torch.cat([splice(x).to(out.dtype) for x in x_ND.split(chunk_tokens)])
            dst.output = out
        h = get_module(nn_model, hooks.final_norm).output.save()
        tracer.stop()  # the unembedding is left to the caller, in chunks
    return h
