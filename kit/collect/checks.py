"""Input checks of `TopKCollector.update`: one clear line for each way its arguments can be wrong."""
from __future__ import annotations

import torch


def check_acts(acts, n_latents: int, device: torch.device) -> bool:
    """Validate `acts`; True for the sparse (top_idx_BK, top_vals_BK) pair, False for dense [B, L]."""
    L = n_latents
    if isinstance(acts, (tuple, list)):
        if len(acts) != 2:
            raise ValueError("sparse acts must be the pair (top_idx_BK, top_vals_BK)")
        idx_BK, vals_BK = acts
        if idx_BK.shape != vals_BK.shape or idx_BK.dim() != 2 or idx_BK.is_floating_point():
            raise ValueError(f"need integer top_idx_BK and top_vals_BK of one [B, K] shape, got "
                             f"{tuple(idx_BK.shape)} {idx_BK.dtype} and {tuple(vals_BK.shape)}")
        if idx_BK.numel() and not 0 <= int(idx_BK.min()) <= int(idx_BK.max()) < L:
            raise ValueError(f"top_idx_BK holds latent ids outside [0, {L})")
        check_device(vals_BK, device)
        return True
    if acts.dim() != 2 or acts.shape[1] != L or not acts.is_floating_point():
        raise ValueError(f"dense acts must be a float [B, n_latents={L}] tensor, got {tuple(acts.shape)} "
                         f"{acts.dtype}")
    check_device(acts, device)
    return False


def check_device(t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"activations are on {t.device} but the collector is on {device}: "
                         f"create it with device={str(t.device)!r}")


def check_ids(global_ids_B, acts, ctx_len: int, device: torch.device) -> torch.Tensor:
    """The global ids as a long tensor on `device`, one per row, never at a BOS position."""
    rows = (acts[0] if isinstance(acts, (tuple, list)) else acts).shape[0]
    gid_B = torch.as_tensor(global_ids_B).to(device)
    if gid_B.shape != (rows,) or gid_B.is_floating_point() or gid_B.dtype == torch.bool:
        raise ValueError(f"global_ids_B must be integers of shape [{rows}] (one per row), got "
                         f"{tuple(gid_B.shape)} {gid_B.dtype}")
    gid_B = gid_B.long()
    if rows and (int(gid_B.min()) < 0 or bool((gid_B % ctx_len == 0).any())):
        raise ValueError("global ids must be >= 0 and never at position 0 (BOS is never collected)")
    return gid_B
