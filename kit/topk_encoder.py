"""A TopK encoder whose backward pass touches only the k selected latents of each row.

Autograd through `topk` would materialise a dense [B, L] gradient and run a dense `x.T @ grad` for W_enc, although
only k of the L entries of each row are nonzero. This Function computes the same gradients from the k selected
entries with a sparse matrix product (EleutherAI's sparsify fuses its TopK encoder for the same reason). The
forward is unchanged: `pre = x @ W_enc + b_enc`, top-k per row, ReLU after the top-k.
"""
from __future__ import annotations

import torch


class TopKEncode(torch.autograd.Function):
    """`(top_vals_BK, top_idx_BK, pre_BL) = TopKEncode.apply(x_BD, W_enc_DL, b_enc_L, k)`; `pre` is detached."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DL, b_enc_L, k: int):
        pre_BL = torch.addmm(b_enc_L, x_BD, W_enc_DL)
        vals_BK, idx_BK = pre_BL.topk(k, dim=1, sorted=False)
        vals_BK = vals_BK.clamp_min(0)  # ReLU after TopK, as in openai/sparse_autoencoder
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
