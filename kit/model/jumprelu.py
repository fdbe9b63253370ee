"""JumpReLU's autograd functions (Rajamanoharan et al. 2024): the activation and its L0 step, each with a
straight-through estimator whose rectangle kernel of width `bandwidth` gives the threshold a gradient."""
from __future__ import annotations

import torch


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta). Rajamanoharan et al. 2024 ('Jumping Ahead', §4): the pre gradient is the
    ordinary H(pre - theta); theta gets the pseudo-derivative -(theta/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre_BL, theta_L, bandwidth):
        ctx.save_for_backward(pre_BL, theta_L)
        ctx.bandwidth = bandwidth
        return pre_BL * (pre_BL > theta_L)

    @staticmethod
    def backward(ctx, grad_BL):
        pre_BL, theta_L = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel_BL = _rectangle((pre_BL - theta_L) / eps)
        grad_theta = (-(theta_L / eps) * kernel_BL * grad_BL).sum_to_size(theta_L.shape)
        return grad_BL * (pre_BL > theta_L), grad_theta, None


class Step(torch.autograd.Function):
    """H(pre - theta), for the L0 penalty. Same paper: no gradient to pre, -(1/eps) K(.) to theta."""

    @staticmethod
    def forward(ctx, pre_BL, theta_L, bandwidth):
        ctx.save_for_backward(pre_BL, theta_L)
        ctx.bandwidth = bandwidth
        return (pre_BL > theta_L).to(pre_BL.dtype)

    @staticmethod
    def backward(ctx, grad_BL):
        pre_BL, theta_L = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1 / eps) * _rectangle((pre_BL - theta_L) / eps) * grad_BL).sum_to_size(theta_L.shape)
        return torch.zeros_like(pre_BL), grad_theta, None
