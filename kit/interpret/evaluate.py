"""Held-out metrics: FVU, L0, dead and dense fractions, and spliced next-token loss (ΔCE, KL, CE recovered).

Definitions:
- FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖², centred on the mean of the *target* over the evaluated tokens; streamed as
  float64 sums, Σ‖y − ŷ‖² / (Σ‖y‖² − ‖Σy‖²/N).
- Spliced CE replaces the whole MLP block output at every trained position (mask: not BOS, not padding) and
  scores the prediction made at position i of token i+1 iff mask[i] and mask[i+1]: nothing is scored at a BOS
  (where nothing is replaced) nor with a BOS or padding target. Zero- and mean-ablation replace the same
  positions; KL is KL(clean ‖ replaced) over the same predictions.
- CE loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean); the mean-ablation variant uses CE_mean.

Memory: everything streams, one lm_batch of B contexts of T tokens at a time. With C = chunk_tokens, V the
vocabulary, D the model width, L the latents, the peak beyond the weights is at most
(`kit.memory.eval_peak_bytes`)
    lm_forward(B, T) + 40·B·T·D + 12·C·L + 16·C·V bytes:
one forward's own activations; at most ten fp32 [B, T, D] tensors (the activations and their masked copies,
or the final hidden states of the clean model and of each replacement); one transcoder chunk (pre-acts, acts);
and four fp32 [C, V] tensors: the unembedding is applied to C final hidden states at a time, the clean log-probs
and probs are kept across the replacements, plus one replacement's logits and log-probs. Logits of a whole
lm_batch never exist.

Under torchrun (`across_ranks=True`) each rank evaluates every world-th context and the float64 sums are
all-reduced, so every rank gets the single-rank result up to summation order.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kit import distributed
from kit.lm.access import as_nnsight, final_hidden
from kit.lm.hooks import HookPoints
from kit.config import DENSE_RATE

REPLACEMENTS = ("clean", "spliced", "zero", "mean")
CHUNK_TOKENS = 512
"""Positions per unembedding and per transcoder chunk: 16·C·V bytes is 2.1 GB at Gemma-2's V = 256,000."""


def unembed(model, h_CD: torch.Tensor) -> torch.Tensor:
    """fp32 logits of hidden states, as the causal LM's own forward computes them (Gemma 2's softcap included)."""
    logits_CV = model.get_output_embeddings()(h_CD)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits_CV.div_(cap).tanh_().mul_(cap)  # in place, in the model's dtype, as transformers does
    return logits_CV.float()


@torch.no_grad()
def splice_sums(model, hooks: HookPoints, tokens_NT: torch.Tensor, mask_NT: torch.Tensor,
                replacements: dict[str, Callable | None], lm_batch: int = 16,
                chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """float64 [R, 3]: Σ CE, Σ KL(clean ‖ replaced) and the number of scored predictions, per replacement.

    `replacements` maps a name to `fn(x_ND) -> y_hat_ND`, applied (in chunks) to the transcoder inputs of the
    masked positions, or to None for the clean model.
    """
    device = next(as_nnsight(model)._module.parameters()).device
    sums_R3 = torch.zeros(len(replacements), 3, dtype=torch.float64, device=device)
    for start in range(0, len(tokens_NT), lm_batch):
        ids, mask = tokens_NT[start:start + lm_batch].to(device), mask_NT[start:start + lm_batch].to(device)
        scored = mask[:, :-1] & mask[:, 1:]  # predicted at a trained token, of a trained token
        clean_ND = final_hidden(model, hooks, ids)[:, :-1][scored]
        hidden = [None if fn is None else final_hidden(model, hooks, ids, fn, mask, chunk_tokens)[:, :-1][scored]
                  for fn in replacements.values()]  # None: the clean model
        target_N = ids[:, 1:][scored]
        for c in range(0, len(target_N), chunk_tokens):
            part = slice(c, c + chunk_tokens)
            parts = [h if h is None else h[part] for h in hidden]
            _chunk_sums(model, clean_ND[part], parts, target_N[part], sums_R3)
    return sums_R3


def _chunk_sums(model, clean_CD, hidden, target_C, sums_R3) -> None:
    """Add one chunk's CE and KL sums; at most four fp32 [C, V] tensors live at once."""
    clean_logp_CV = F.log_softmax(unembed(model, clean_CD), -1)
    p_C1V = clean_logp_CV.exp()[:, None]
    for r, h_CD in enumerate(hidden):
        logp_CV = clean_logp_CV if h_CD is None else F.log_softmax(unembed(model, h_CD), -1)
        ce = -logp_CV.gather(-1, target_C[:, None]).double().sum()
        if h_CD is None:
            kl = ce.new_zeros(())
        else:  # Σ p·(clean − replaced), the difference taken in place and dotted by bmm: no fifth [C, V]
            kl = torch.bmm(p_C1V, logp_CV.neg_().add_(clean_logp_CV)[:, :, None]).double().sum()
        del logp_CV  # before the next replacement's logits exist
        sums_R3[r] += torch.stack([ce, kl, ce.new_tensor(float(len(target_C)))])


def splice_losses(model, hooks: HookPoints, tokens_NT, mask_NT, replacements, lm_batch: int = 16,
                  chunk_tokens: int = CHUNK_TOKENS) -> dict[str, dict[str, float]]:
    """Mean next-token CE and KL to the clean model per replacement (see `splice_sums`)."""
    sums = splice_sums(model, hooks, tokens_NT, mask_NT, replacements, lm_batch, chunk_tokens).tolist()
    return {name: {"ce": ce / n, "kl": kl / n} for name, (ce, kl, n) in zip(replacements, sums)}


@torch.no_grad()
def activation_sums(transcoders, store, indices, chunk_tokens: int = CHUNK_TOKENS) -> list[torch.Tensor]:
    """Per transcoder, float64 [4 + D + L]: Σ‖y − ŷ‖², Σ‖y‖², N, Σ L0, then Σy (D) and each latent's firing
    count (L); the language model reads each context once for all of them."""
    sums = [torch.zeros(4 + tc.cfg.d_out + tc.cfg.d_latent, dtype=torch.float64, device=tc.W_dec.device)
            for tc in transcoders]
    for start in range(0, len(indices), store.config.lm_batch):
        x, y, mask = store.activations_for_contexts(indices[start:start + store.config.lm_batch])
        for x_CD, y_CD in zip(x[mask].split(chunk_tokens), y[mask].split(chunk_tokens)):
            for tc, sums_S in zip(transcoders, sums):
                dev, D = tc.W_dec.device, tc.cfg.d_out
                out = tc(x_CD.to(dev, tc.W_dec.dtype))
                y64_CD, fired_CL = y_CD.to(dev).double(), out.acts > 0
                sums_S[:4] += torch.stack([(y64_CD - out.y_hat.double()).square().sum(), y64_CD.square().sum(),
                                           y64_CD.new_tensor(float(len(y64_CD))), fired_CL.sum().double()])
                sums_S[4:4 + D] += y64_CD.sum(0)
                sums_S[4 + D:] += fired_CL.sum(0)
    return sums


def evaluate(transcoder, store, n_contexts: int | None = None, dead_frac: float | None = None, *,
             indices=None, chunk_tokens: int = CHUNK_TOKENS, across_ranks: bool = False) -> dict:
    """All final metrics on held-out contexts (definitions and memory bound: the module docstring).

    `indices` defaults to the first `n_contexts` held-out contexts. With `across_ranks`, every rank must call
    this with the same contexts: each evaluates every world-th one and the sums are all-reduced.
    """
    return evaluate_many([transcoder], store, n_contexts, [dead_frac], indices=indices, chunk_tokens=chunk_tokens,
                         across_ranks=across_ranks)[0]


@torch.no_grad()
def evaluate_many(transcoders, store, n_contexts: int | None = None, dead_fracs=None, *, indices=None,
                  chunk_tokens: int = CHUNK_TOKENS, across_ranks: bool = False) -> list[dict]:
    """`evaluate` for several transcoders of one store (a sweep): the clean, zero- and mean-ablated passes run
    once for all of them, and each transcoder adds one spliced pass. The peak grows by one [N, D] tensor of
    final hidden states per extra transcoder (N: one lm_batch's scored positions)."""
    idx = list(store.holdout_indices[:n_contexts] if indices is None else indices)
    if not idx:
        raise ValueError("no contexts to evaluate: the store has no held-out contexts (set holdout_contexts > 0)")
    reduce = (lambda t: distributed.reduce_across_ranks(t, "sum")) if across_ranks else (lambda t: t)
    if across_ranks:
        rank, world = distributed.rank_world()
        idx = idx[rank::world]
    acts = [reduce(a) for a in activation_sums(transcoders, store, idx, chunk_tokens)]
    D = transcoders[0].cfg.d_out
    mean_y = (acts[0][4:4 + D] / acts[0][2]).float()  # the mean ablation needs every rank's tokens first
    tokens, mask = _tokens(store, idx, store.config.ctx_len)
    spliced = {f"spliced{i}": _splice(tc) for i, tc in enumerate(transcoders)}
    ce = reduce(splice_sums(store.model, store.hooks, tokens, mask, {
        "clean": None, "zero": lambda v: torch.zeros_like(v), "mean": lambda v: mean_y.to(v).expand(len(v), -1),
        **spliced}, store.config.lm_batch, chunk_tokens))
    dead_fracs = dead_fracs or [None] * len(transcoders)
    return [_metrics(a, ce[[0, 3 + i, 1, 2]].to(a.device), D, d)  # rows in REPLACEMENTS order
            for i, (a, d) in enumerate(zip(acts, dead_fracs))]


def _splice(tc):
    return lambda v: tc(v.to(tc.W_dec.device, tc.W_dec.dtype)).y_hat


def _metrics(act: torch.Tensor, ce_R3: torch.Tensor, D: int, dead_frac) -> dict:
    """The metrics dict from the all-reduced sums of `activation_sums` and `splice_sums`."""
    sse, yy, n, l0 = act[:4].tolist()
    f = sse / (yy - act[4:4 + D].square().sum().item() / n)
    rate_L = act[4 + D:] / n
    ce = {name: {"ce": s[0] / s[2], "kl": s[1] / s[2]} for name, s in zip(REPLACEMENTS, ce_R3.tolist())}
    return {"fvu": f, "explained_variance": 1 - f, "l0": l0 / n,
            "dead_frac": dead_frac, "dead_frac_eval": (rate_L == 0).double().mean().item(),
            "dense_frac": (rate_L > DENSE_RATE).double().mean().item(),
            "ce_clean": ce["clean"]["ce"], "ce_spliced": ce["spliced"]["ce"], "ce_zero": ce["zero"]["ce"],
            "ce_mean": ce["mean"]["ce"], "delta_ce": ce["spliced"]["ce"] - ce["clean"]["ce"],
            "kl": ce["spliced"]["kl"], "kl_zero": ce["zero"]["kl"], "kl_mean": ce["mean"]["kl"],
            "ce_loss_recovered": _recovered(ce, "zero"), "ce_loss_recovered_vs_mean": _recovered(ce, "mean"),
            "eval_tokens": int(n)}


def _recovered(ce: dict, baseline: str) -> float:
    gap = ce[baseline]["ce"] - ce["clean"]["ce"]
    return (ce[baseline]["ce"] - ce["spliced"]["ce"]) / gap if gap else float("nan")


def _tokens(store, idx, ctx_len: int):
    """`(tokens_NT, mask_NT)` of this rank's contexts; empty tensors when it has none."""
    if not idx:
        return torch.zeros(0, ctx_len, dtype=torch.long), torch.zeros(0, ctx_len, dtype=torch.bool)
    return store.tokens_for_contexts(idx)
