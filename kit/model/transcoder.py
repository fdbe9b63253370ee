"""Transcoder: a wide, sparse latent layer that maps an MLP's input x to that MLP's output y.

Shape suffixes: B batch, D model width (d_in for x, d_out for y), L latents, K active latents.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kit import distributed
from kit.model import weights
from kit.model.jumprelu import JumpReLU, Step
from kit.model.topk_encoder import TopKEncode, topk
from kit.config import TranscoderConfig

class TranscoderOutput(NamedTuple):
    y_hat: torch.Tensor
    """[B, d_out] reconstruction of the MLP output."""
    acts: torch.Tensor
    """[B, d_latent] dense latent activations."""
    top_idx: torch.Tensor | None
    """[B, k] active latent ids for topk; None otherwise (batchtopk rows hold unequal counts)."""
    top_vals: torch.Tensor | None
    """[B, k] their activations for topk; None otherwise."""
    pre_acts: torch.Tensor
    """[B, d_latent] encoder output before the activation (AuxK and the JumpReLU L0 need it)."""


class Transcoder(nn.Module):
    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        dt = cfg.torch_dtype
        # Unit-norm random decoder rows, encoder = decoder transpose: Gao et al. 2024 §A.1 and
        # Conerly et al. 2024 ('April update'). When d_in != d_out no transpose exists, so the
        # encoder's latent columns are drawn the same way, independently.
        W_dec = F.normalize(torch.randn(cfg.d_latent, cfg.d_out), dim=1)
        if cfg.d_in == cfg.d_out:
            W_enc = W_dec.T.clone()
        else:
            W_enc = F.normalize(torch.randn(cfg.d_in, cfg.d_latent), dim=0)
        self.W_enc = nn.Parameter(W_enc.to(dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_latent, dtype=dt))
        self.W_dec = nn.Parameter(W_dec.to(dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=dt))
        # Zero skip weights make a skip transcoder start as a plain one (Paulo et al. 2025).
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out, dtype=dt)) if cfg.skip else None
        if cfg.activation == "jumprelu":
            # theta = exp(log_threshold) keeps the threshold positive (Rajamanoharan et al. 2024).
            log_theta = math.log(cfg.jumprelu_threshold)
            self.log_threshold = nn.Parameter(torch.full((cfg.d_latent,), log_theta, dtype=dt))
        if cfg.activation == "batchtopk":
            # Global eval-time threshold (Bussmann et al. 2024 §3): a running average of the smallest
            # activation BatchTopK kept in training; -1 until the first training forward sets it.
            # float32 even for bf16 weights, whose 8-bit mantissa would swallow the EMA's small steps.
            self.register_buffer("threshold", torch.tensor(-1.0))

    @property
    def theta(self) -> torch.Tensor:
        """[d_latent] JumpReLU thresholds."""
        return self.log_threshold.exp()

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense latent activations acts_BL of the MLP input x_BD."""
        return self._activate(self._pre_acts(x_BD))[0]

    def decode(self, acts_BL: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """y_hat_BD from dense acts_BL; a skip transcoder also needs the MLP input x_BD."""
        return self._add_skip(acts_BL @ self.W_dec + self.b_dec, x_BD)

    def decode_sparse(self, top_idx_BK: torch.Tensor, top_vals_BK: torch.Tensor,
                      x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """y_hat_BD from the k active latents per row; only their decoder rows are read."""
        # embedding_bag sums k rows instead of a [B, L] @ [L, D] matmul: about 2x on CPU (docs/design.md).
        weights_BK = top_vals_BK.to(self.W_dec.dtype)
        y_BD = F.embedding_bag(top_idx_BK, self.W_dec, per_sample_weights=weights_BK, mode="sum")
        return self._add_skip(y_BD + self.b_dec, x_BD)

    def forward(self, x_BD: torch.Tensor) -> TranscoderOutput:
        if self.cfg.activation == "topk" and torch.is_grad_enabled():
            # Same values as below; the backward reads only the k selected latents (kit/topk_encoder.py).
            # pre_acts then carries no gradient: AuxK recomputes the dead latents' pre-activations itself.
            self._pre_acts(x_BD[:0])  # shape check
            top_vals_BK, top_idx_BK, pre_BL = TopKEncode.apply(x_BD, self.W_enc, self.b_enc, self.cfg.k)
            # pre_BL is bf16 under autocast, top_vals_BK the weights' dtype: acts_BL takes the latter
            acts_BL = pre_BL.new_zeros(pre_BL.shape, dtype=top_vals_BK.dtype).scatter_(1, top_idx_BK,
                                                                                        top_vals_BK.detach())
            y_hat_BD = self.decode_sparse(top_idx_BK, top_vals_BK, x_BD)
            return TranscoderOutput(y_hat_BD, acts_BL, top_idx_BK, top_vals_BK, pre_BL)
        pre_BL = self._pre_acts(x_BD)
        acts_BL, top_idx_BK, top_vals_BK = self._activate(pre_BL)
        if top_idx_BK is None:
            y_hat_BD = self.decode(acts_BL, x_BD)
        else:
            y_hat_BD = self.decode_sparse(top_idx_BK, top_vals_BK, x_BD)
        if self.cfg.activation == "batchtopk" and self.training:
            # a collective under torchrun: every rank must run this forward (.eval() for one rank's use)
            self._update_threshold_(acts_BL)
        return TranscoderOutput(y_hat_BD, acts_BL, top_idx_BK, top_vals_BK, pre_BL)

    def l0_penalty(self, pre_acts_BL: torch.Tensor) -> torch.Tensor:
        """JumpReLU's L0 per token, averaged over the batch; its gradient reaches log_threshold only."""
        if self.cfg.activation != "jumprelu":
            raise ValueError("l0_penalty needs activation='jumprelu', "
                             f"this transcoder uses {self.cfg.activation!r}")
        return Step.apply(pre_acts_BL, self.theta, self.cfg.jumprelu_bandwidth).sum(-1).mean()

    @torch.no_grad()
    def init_b_dec(self, y_BD: torch.Tensor) -> None:
        """Set b_dec to the mean target, so training starts from the mean-ablation baseline.

        Under torchrun this is a collective: the mean is over every rank's rows, so all ranks set the same b_dec.
        """
        if y_BD.ndim != 2 or y_BD.shape[1] != self.cfg.d_out:
            raise ValueError(f"init_b_dec expects targets of shape [batch, d_out={self.cfg.d_out}], "
                             f"got {tuple(y_BD.shape)}")
        sums = torch.cat([y_BD.double().sum(0), y_BD.new_tensor([len(y_BD)], dtype=torch.float64)])
        sums = distributed.reduce_across_ranks(sums, "sum")
        self.b_dec.copy_((sums[:-1] / sums[-1]).to(self.b_dec))

    @torch.no_grad()
    def fold_scales_(self, x_scale: float, y_scale: float) -> None:
        """Absorb input/target scalings into the weights: a transcoder trained on (x * x_scale, y * y_scale)
        becomes one for raw (x, y) with identical latent activations (TopK, ReLU, JumpReLU are unchanged by
        the input scale folded into W_enc; the output scale divides the decoder)."""
        if not (x_scale > 0 and y_scale > 0):
            raise ValueError(f"scales must be positive, got x_scale={x_scale}, y_scale={y_scale}")
        self.W_enc.mul_(x_scale)
        self.W_dec.div_(y_scale)
        self.b_dec.div_(y_scale)
        if self.W_skip is not None:
            self.W_skip.mul_(x_scale / y_scale)

    @torch.no_grad()
    def fold_input_shift_(self, x_shift: torch.Tensor) -> None:
        """Absorb an input shift: a transcoder trained on x - x_shift becomes one for x with identical pre-activations
        and output (the encoder bias takes -x_shift @ W_enc; a skip connection's -x_shift @ W_skip goes to b_dec)."""
        if x_shift.shape != (self.cfg.d_in,):
            raise ValueError(f"x_shift must have shape [d_in={self.cfg.d_in}], got {tuple(x_shift.shape)}")
        shift = x_shift.to(self.W_enc.device, torch.float64)
        self.b_enc.sub_((shift @ self.W_enc.double()).to(self.b_enc.dtype))
        if self.W_skip is not None:
            self.b_dec.sub_((shift @ self.W_skip.double()).to(self.b_dec.dtype))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Project out of W_dec.grad the part along each decoder row, so an optimizer step does not
        change the row norms to first order (sparsify; saprmarks/dictionary_learning)."""
        if self.W_dec.grad is None:
            raise ValueError("W_dec.grad is None: call remove_parallel_grad_ after backward()")
        unit_LD = F.normalize(self.W_dec, dim=1)
        parallel_L1 = (self.W_dec.grad * unit_LD).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel_L1 * unit_LD)

    def save(self, path: str | os.PathLike) -> None:
        """Write path/model.safetensors, then path/config.json, each atomically (see `kit.model.weights`)."""
        weights.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None,
             expect: TranscoderConfig | None = None) -> Transcoder:
        """Read what `save` wrote; with `expect`, raise ValueError unless the saved config equals it."""
        return weights.load(cls, path, device, expect)

    @classmethod
    def from_gemma_scope(cls, npz_path: str | os.PathLike, device: str | torch.device | None = None,
                         dtype: str = "float32") -> Transcoder:
        """A Gemma Scope JumpReLU transcoder from its params.npz (see `kit.model.weights.from_gemma_scope`)."""
        return weights.from_gemma_scope(cls, npz_path, device, dtype)

    def _pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        if x_BD.ndim != 2 or x_BD.shape[1] != self.cfg.d_in:
            raise ValueError(f"expected x of shape [batch, d_in={self.cfg.d_in}], got {tuple(x_BD.shape)}; "
                             "flatten leading dims with x.reshape(-1, d_in)")
        return torch.addmm(self.b_enc, x_BD, self.W_enc)  # fused bias add: one pass less over [B, L]

    def _activate(self, pre_BL):
        """(acts_BL, top_idx_BK, top_vals_BK); the last two are None except for topk."""
        activation = self.cfg.activation
        if activation == "relu":
            return F.relu(pre_BL), None, None
        if activation == "jumprelu":
            return JumpReLU.apply(pre_BL, self.theta, self.cfg.jumprelu_bandwidth), None, None
        if activation == "topk":
            top_vals_BK, top_idx_BK = topk(pre_BL, self.cfg.k)  # torch.topk's set, faster on a CPU
            top_vals_BK = F.relu(top_vals_BK)  # ReLU after TopK, as in openai/sparse_autoencoder
            acts_BL = torch.zeros_like(pre_BL).scatter_(1, top_idx_BK, top_vals_BK)  # in place: no copy
            return acts_BL, top_idx_BK, top_vals_BK
        if not self.training and self.threshold >= 0:
            return pre_BL * (pre_BL > self.threshold), None, None
        # BatchTopK (Bussmann et al. 2024): the k * B largest pre-activations of the whole batch.
        vals_N, flat_idx_N = pre_BL.flatten().topk(self.cfg.k * pre_BL.shape[0], sorted=False)
        acts_N = torch.zeros_like(pre_BL).flatten().scatter_(0, flat_idx_N, F.relu(vals_N))
        return acts_N.view_as(pre_BL), None, None

    @torch.no_grad()
    def _update_threshold_(self, acts_BL: torch.Tensor, beta: float = 0.999) -> None:
        # dictionary_learning's BatchTopK trainer: EMA (beta 0.999) of the smallest positive kept act.
        # Written with torch.where so that no step waits on a device-to-host copy. Under torchrun the
        # minimum is over every rank's batch (a collective), so all ranks apply the same update.
        low = torch.where(acts_BL > 0, acts_BL, torch.inf).min().to(self.threshold)
        low = distributed.reduce_across_ranks(low, "min")
        low = torch.where(torch.isfinite(low), low, self.threshold)
        ema = beta * self.threshold + (1 - beta) * low
        self.threshold.copy_(torch.where(self.threshold < 0, low, ema))

    def _add_skip(self, y_hat_BD: torch.Tensor, x_BD: torch.Tensor | None) -> torch.Tensor:
        if self.W_skip is None:
            return y_hat_BD
        if x_BD is None:
            raise ValueError("this is a skip transcoder (cfg.skip=True): pass x_BD, the MLP input, "
                             "for its x @ W_skip term")
        return y_hat_BD + x_BD @ self.W_skip
