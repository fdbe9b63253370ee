"""Held-out metrics: FVU, L0, dead and dense fractions, and spliced next-token loss (ΔCE, KL, CE recovered).

Definitions follow DESIGN.md exactly:
- FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖², centred on the mean of the *target* over the evaluated tokens.
- Spliced CE replaces the whole MLP block output at every trained position (not BOS, not padding) and measures
  next-token cross-entropy on real tokens; zero- and mean-ablation replace the same positions.
- CE loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean); the mean-ablation variant uses CE_mean.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kit.hooks import HookPoints, get_module

DENSE_RATE = 0.1


def fvu(y_BD: torch.Tensor, y_hat_BD: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained, centred on the target's mean (never on zero)."""
    y, y_hat = y_BD.float(), y_hat_BD.float()
    return (y - y_hat).square().sum() / (y - y.mean(0)).square().sum()


@torch.no_grad()
def splice_losses(model, hooks: HookPoints, tokens_NT: torch.Tensor, mask_NT: torch.Tensor,
                  replacements: dict[str, Callable | None], lm_batch: int = 16) -> dict[str, dict[str, float]]:
    """Mean next-token CE (and KL to the clean logits) with the MLP block output replaced at `mask_NT`.

    `replacements` maps a name to `fn(x_ND) -> y_hat_ND` applied to the transcoder inputs of the masked
    positions, or to None for the clean model.
    """
    sums = {name: {"ce": 0.0, "kl": 0.0} for name in replacements}
    count = 0
    device = next(model.parameters()).device
    for start in range(0, len(tokens_NT), lm_batch):
        ids, mask = tokens_NT[start:start + lm_batch].to(device), mask_NT[start:start + lm_batch].to(device)
        target, valid = ids[:, 1:], mask[:, 1:]  # predict every real token after BOS
        clean_logp = F.log_softmax(model(ids).logits[:, :-1].float(), -1)
        count += int(valid.sum())
        for name, fn in replacements.items():
            logp = clean_logp if fn is None else F.log_softmax(_spliced_logits(model, hooks, ids, mask, fn), -1)
            ce = -logp.gather(-1, target[..., None])[..., 0]
            kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
            sums[name]["ce"] += ce[valid].sum().item()
            sums[name]["kl"] += kl[valid].sum().item()
    return {name: {k: v / count for k, v in s.items()} for name, s in sums.items()}


def _spliced_logits(model, hooks: HookPoints, ids, mask, fn) -> torch.Tensor:
    seen = {}
    src, dst = get_module(model, hooks.in_path), get_module(model, hooks.out_path)

    def read(module, args, output=None):
        seen["x"] = hooks.transform_input(args[0] if hooks.in_from == "input" else output)

    def replace(module, args, output):
        out = output.clone()
        out[mask] = fn(seen["x"][mask]).to(out.dtype)
        return out

    handles = [src.register_forward_pre_hook(read) if hooks.in_from == "input" else src.register_forward_hook(read),
               dst.register_forward_hook(replace)]
    try:
        return model(ids).logits[:, :-1].float()
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def evaluate(transcoder, store, n_contexts: int | None = None, dead_frac: float | None = None) -> dict:
    """All final metrics on the store's held-out contexts (see the module docstring for definitions)."""
    idx = store.holdout_indices[:n_contexts]
    if not idx:
        raise ValueError("the store has no held-out contexts: set holdout_contexts > 0")
    x, y, mask = store.activations_for_contexts(idx)
    dev = transcoder.W_dec.device
    x_ND, y_ND = x[mask].to(dev, transcoder.W_dec.dtype), y[mask].to(dev, transcoder.W_dec.dtype)
    outs = [transcoder(c) for c in x_ND.split(4096)]  # one encoder pass gives both acts and y_hat
    acts, y_hat = torch.cat([o.acts for o in outs]), torch.cat([o.y_hat for o in outs])
    rate_L = (acts > 0).float().mean(0)
    mean_y = y_ND.float().mean(0)
    tokens, _ = _tokens(store, idx)
    ce = splice_losses(store.model, store.hooks, tokens, mask, {
        "clean": None, "spliced": lambda v: transcoder(v.to(dev, transcoder.W_dec.dtype)).y_hat,
        "zero": lambda v: torch.zeros_like(v), "mean": lambda v: mean_y.to(v).expand(len(v), -1)},
        store.config.lm_batch)
    f = fvu(y_ND, y_hat).item()
    return {"fvu": f, "explained_variance": 1 - f, "l0": (acts > 0).sum(-1).float().mean().item(),
            "dead_frac": dead_frac, "dead_frac_eval": (rate_L == 0).float().mean().item(),
            "dense_frac": (rate_L > DENSE_RATE).float().mean().item(),
            "ce_clean": ce["clean"]["ce"], "ce_spliced": ce["spliced"]["ce"], "ce_zero": ce["zero"]["ce"],
            "ce_mean": ce["mean"]["ce"], "delta_ce": ce["spliced"]["ce"] - ce["clean"]["ce"],
            "kl": ce["spliced"]["kl"], "kl_zero": ce["zero"]["kl"], "kl_mean": ce["mean"]["kl"],
            "ce_loss_recovered": _recovered(ce, "zero"), "ce_loss_recovered_vs_mean": _recovered(ce, "mean"),
            "eval_tokens": int(mask.sum())}


def _recovered(ce: dict, baseline: str) -> float:
    gap = ce[baseline]["ce"] - ce["clean"]["ce"]
    return (ce[baseline]["ce"] - ce["spliced"]["ce"]) / gap if gap else float("nan")


def _tokens(store, idx):
    from kit.data import stack_tokens
    return stack_tokens([store.contexts[i] for i in idx])
