"""A TopK encoder whose backward pass touches only the k selected latents of each row.

Autograd through `topk` would materialise a dense [B, L] gradient and run a dense `x.T @ grad` for W_enc, although
only k of the L entries of each row are nonzero. This Function computes the same gradients from the k selected
entries with a sparse matrix product (EleutherAI's sparsify fuses its TopK encoder for the same reason). The
forward is unchanged: `pre = x @ W_enc + b_enc`, top-k per row (`topk`, the same set as `torch.topk`), ReLU after
the top-k.
"""
from __future__ import annotations

import torch


GROUP = 16
"""Entries per group in `topk`'s first pass: about sqrt(L / k) for the kit's shapes (9,216 / 32, 16,384 / 64)."""


def topk(pre_BL: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(vals_BK, idx_BK)`: the k largest entries of each row, the same set as `torch.topk`'s (in another order).

    On a CPU, contiguous float32 or float64 rows of L = 16 G entries (G >= 4 (k + 1)) go through `grouped_topk`,
    which does about a third less work (0.95-1.4x torch.topk's speed on a loaded 2-core machine, BENCHMARKS.md);
    anything else, a CUDA tensor or bf16 pre-activations included, uses `torch.topk`.
    """
    L = pre_BL.shape[1]
    if (pre_BL.device.type != "cpu" or pre_BL.dtype not in (torch.float32, torch.float64) or L % GROUP
            or L // GROUP < 4 * (k + 1) or not pre_BL.is_contiguous()):
        return pre_BL.topk(k, dim=1, sorted=False)
    return grouped_topk(pre_BL, k)


def grouped_topk(pre_BL: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk` in two passes over L = 16 G entries per row; rows it cannot settle exactly go to `torch.topk`.

    Group g holds entries g, g + G, g + 2G, ... (a strided view, so its max is one vectorised pass). The k + 1
    groups with the largest maxima hold the row's top k: an entry outside them is <= the smallest chosen max, and
    each chosen group holds an entry that large. The k + 1 largest of those 16 (k + 1) candidates are sorted, and
    the k-th, t, settles the row when it is strictly above both the (k + 1)-th candidate and every entry outside
    (the smallest chosen max): then exactly k entries are >= t and the top-k set is unique, so it is torch.topk's.
    Rows with a tie at t (zeros, duplicated values) or a NaN fail that test and are recomputed by torch.topk, whose
    own choice among tied entries is kept.
    """
    B, L = pre_BL.shape
    G, n = L // GROUP, k + 1
    pre_BSG = pre_BL.view(B, GROUP, G)
    max_BN, group_BN = pre_BSG.amax(1).topk(n, dim=1, sorted=False)
    group_BSN = group_BN[:, None, :].expand(B, GROUP, n)
    vals_BN, pos_BN = pre_BSG.gather(2, group_BSN).view(B, GROUP * n).topk(n, dim=1, sorted=True)
    # Few, whole-batch ops: on a shared machine every parallel op can wait a time slice for its second thread.
    cols_BC = (group_BSN + torch.arange(0, L, G, device=pre_BL.device)[:, None]).view(B, GROUP * n)
    idx_BK, vals_BK = cols_BC.gather(1, pos_BN[:, :k]), vals_BN[:, :k]
    bound_B = torch.maximum(vals_BN[:, k], max_BN.amin(1))
    unsettled = (vals_BN[:, k - 1] > bound_B).logical_not_().nonzero()[:, 0]  # NaN compares False: unsettled
    if len(unsettled):
        vals_BK[unsettled], idx_BK[unsettled] = pre_BL[unsettled].topk(k, dim=1, sorted=False)
    return vals_BK, idx_BK


class TopKEncode(torch.autograd.Function):
    """`(top_vals_BK, top_idx_BK, pre_BL) = TopKEncode.apply(x_BD, W_enc_DL, b_enc_L, k)`; `pre` is detached."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DL, b_enc_L, k: int):
        pre_BL = torch.addmm(b_enc_L, x_BD, W_enc_DL)  # bf16 under autocast
        vals_BK, idx_BK = topk(pre_BL, k)
        # ReLU after TopK, as in openai/sparse_autoencoder; the k values go back to the weights' dtype, so the
        # decoder, the collector and the backward see float32 under autocast too.
        vals_BK = vals_BK.clamp_min(0).to(W_enc_DL.dtype)
        ctx.save_for_backward(x_BD, W_enc_DL, idx_BK, vals_BK > 0)
        ctx.mark_non_differentiable(idx_BK, pre_BL)
        return vals_BK, idx_BK, pre_BL

    @staticmethod
    def backward(ctx, g_vals_BK, g_idx, g_pre):
        x_BD, W_enc_DL, idx_BK, alive_BK = ctx.saved_tensors
        g_BK = (g_vals_BK * alive_BK).to(W_enc_DL.dtype)  # ReLU: no gradient where the kept value was clipped
        B, K = idx_BK.shape
        L = W_enc_DL.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            rows = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
            g_LB = torch.sparse_coo_tensor(torch.stack([idx_BK.flatten(), rows]), g_BK.flatten(), (L, B),
                                           check_invariants=False)  # indices are in range by construction
            if ctx.needs_input_grad[1]:
                grad_W = torch.sparse.mm(g_LB, x_BD.to(g_BK.dtype)).T  # [D, L]: only selected columns nonzero
            if ctx.needs_input_grad[2]:
                grad_b = torch.zeros(L, dtype=g_BK.dtype, device=g_BK.device).index_add_(0, idx_BK.flatten(),
                                                                                         g_BK.flatten())
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(g_BK.unsqueeze(1), W_enc_DL.T[idx_BK]).squeeze(1)
        return grad_x, grad_W, grad_b, None
