"""The training objective: reconstruction MSE plus the activation's sparsity term (L1 for relu, L0 for
jumprelu) or, for topk and batchtopk, the AuxK loss that trains dead latents on the residual (Gao et al. 2024)."""
from __future__ import annotations

import torch

from kit.model.loss import auxk_loss, l1_penalty, mse_loss

def objective(tc, cfg, out, x, y, sparsity_coeff: float, dead_L: torch.Tensor) -> torch.Tensor:
    """The loss of one step: `out` is `tc(x)`, `cfg` the TrainConfig, `dead_L` the latents AuxK may train (silent
    for `cfg.auxk_window` tokens)."""
    loss = mse_loss(out.y_hat, y)
    act = tc.cfg.activation
    if act == "relu" and sparsity_coeff > 0:
        loss = loss + sparsity_coeff * l1_penalty(out.acts, tc.W_dec)
    elif act == "jumprelu" and sparsity_coeff > 0:
        loss = loss + sparsity_coeff * tc.l0_penalty(out.pre_acts)
    elif act in ("topk", "batchtopk") and cfg.auxk_coeff > 0 and dead_L.any():
        cols = aux_columns(out.pre_acts, dead_L, cfg.auxk_max_latents)
        # Pre-activations of those dead latents, with gradient (TopK's out.pre_acts has none).
        pre_dead = torch.addmm(tc.b_enc[cols], x, tc.W_enc[:, cols])
        aux = auxk_loss(pre_dead, y - out.y_hat, tc.W_dec[cols], torch.ones_like(cols, dtype=torch.bool), cfg.k_aux)
        loss = loss + cfg.auxk_coeff * aux
    return loss


@torch.no_grad()
def aux_columns(pre_BL: torch.Tensor, dead_L: torch.Tensor, max_latents: int = 1024) -> torch.Tensor:
    """The dead latents AuxK trains: all of them, or the `max_latents` whose largest pre-activation in this
    batch is highest (those are the ones AuxK's per-token top-k_aux would pick)."""
    cols = dead_L.nonzero()[:, 0]
    if len(cols) > max_latents:
        best = pre_BL.detach()[:, cols].amax(0).topk(max_latents).indices
        cols = cols[best.sort().values]
    return cols


@torch.no_grad()
def reset_adam_moments(optimizer, tc, new_L: torch.Tensor) -> None:
    """Zero the Adam moments of latents `new_L` (bool [L]): encoder column, encoder bias and decoder row."""
    if not new_L.any():
        return
    for param, dim in ((tc.W_enc, 1), (tc.b_enc, 0), (tc.W_dec, 0)):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(dim, new_L.nonzero()[:, 0], 0)
