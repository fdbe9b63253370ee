"""Transcoder losses: reconstruction, decoder-norm-weighted L1, and AuxK for dead latents.

Shape suffixes: B batch, D d_out, L latents, K latents kept by AuxK.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_loss(y_hat_BD: torch.Tensor, y_BD: torch.Tensor) -> torch.Tensor:
    """Squared error summed over d_out, averaged over the batch."""
    if y_hat_BD.shape != y_BD.shape:
        # A silent broadcast here ([B, D] against [B, 1, D]) would train on a wrong target.
        raise ValueError(f"y_hat and y must have the same shape, got {tuple(y_hat_BD.shape)} "
                         f"and {tuple(y_BD.shape)}")
    return (y_hat_BD - y_BD).square().sum(-1).mean()


def l1_penalty(acts_BL: torch.Tensor, W_dec_LD: torch.Tensor) -> torch.Tensor:
    """sum_i |f_i| * ||W_dec[i]||, averaged over the batch.

    Weighting by decoder norms stops the optimiser from shrinking acts while growing decoder rows
    (Conerly et al. 2024, 'April update'; used for transcoders by Dunefsky et al. 2024).
    """
    if acts_BL.shape[-1] != W_dec_LD.shape[0]:
        raise ValueError(f"acts has {acts_BL.shape[-1]} latents but W_dec has {W_dec_LD.shape[0]} rows")
    return (acts_BL.abs() * W_dec_LD.norm(dim=1)).sum(-1).mean()


def auxk_loss(pre_acts_BL: torch.Tensor, residual_BD: torch.Tensor, W_dec_LD: torch.Tensor,
              dead_L: torch.Tensor, k_aux: int = 512) -> torch.Tensor:
    """AuxK (Gao et al. 2024 §A.2): reconstruct the error residual = y - y_hat from the k_aux largest
    pre-activations among dead latents, ||e - e_hat||^2 normalised by the variance of e.

    e_hat = relu(top k_aux dead pre-acts) @ W_dec, without b_dec, as in openai/sparse_autoencoder.
    The residual is detached, so gradients reach only the dead latents' encoder and decoder.
    Returns 0 when no latent is dead.
    """
    n_latents = pre_acts_BL.shape[-1]
    if dead_L.dtype != torch.bool or dead_L.shape != (n_latents,):
        raise ValueError(f"dead_L must be a bool tensor of shape [{n_latents}], "
                         f"got {dead_L.dtype} {tuple(dead_L.shape)}")
    if W_dec_LD.shape[0] != n_latents or residual_BD.shape != (pre_acts_BL.shape[0], W_dec_LD.shape[1]):
        raise ValueError(f"shapes disagree: pre_acts {tuple(pre_acts_BL.shape)}, residual "
                         f"{tuple(residual_BD.shape)}, W_dec {tuple(W_dec_LD.shape)}")
    if k_aux < 1:
        raise ValueError(f"k_aux must be >= 1, got {k_aux}")
    n_dead = int(dead_L.sum())
    if n_dead == 0:
        return pre_acts_BL.new_zeros(())
    dead_pre_BL = pre_acts_BL.masked_fill(~dead_L, float("-inf"))
    vals_BK, idx_BK = dead_pre_BL.topk(min(k_aux, n_dead), dim=-1, sorted=False)
    weights_BK = F.relu(vals_BK).to(W_dec_LD.dtype)
    # Dense scatter + matmul rather than embedding_bag: k_aux is in the hundreds, where embedding_bag's per-row
    # backward is several times slower than one [B, n_dead] @ [n_dead, D] matmul on a CPU.
    acts_BL = torch.zeros(pre_acts_BL.shape, dtype=W_dec_LD.dtype, device=W_dec_LD.device)
    e_hat_BD = acts_BL.scatter(1, idx_BK, weights_BK) @ W_dec_LD
    e_BD = residual_BD.detach()
    acc = torch.promote_types(e_hat_BD.dtype, torch.float32)  # sums in at least float32 under bf16
    error = (e_hat_BD - e_BD).to(acc).square().sum()
    variance = (e_BD - e_BD.mean(0)).to(acc).square().sum()
    # A constant residual has zero variance; openai/sparse_autoencoder maps the 0/0 to a zero loss.
    return torch.nan_to_num(error / variance, nan=0.0, posinf=0.0)


def fvu(y_BD: torch.Tensor, y_hat_BD: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained, centred on the target's mean (never on zero)."""
    y, y_hat = y_BD.float(), y_hat_BD.float()
    return (y - y_hat).square().sum() / (y - y.mean(0)).square().sum()
