"""The training loop: one visible `for` loop over batches from any store-like object.

The trainer never touches the language model: anything with `get_batch_with_tokens()`, `state_dict()` and
`load_state_dict()` feeds it, so it is tested on synthetic tensors as well as on the real store.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kit import checkpoint, distributed
from kit.loss import auxk_loss, l1_penalty, mse_loss
from kit.schedule import ScheduleConfig, make_scheduler, sparsity_multiplier

HISTORY_FIELDS = ["step", "tokens", "lr", "loss", "fvu", "l0", "dead_frac", "tokens_per_s"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    steps: int = 1000
    """Optimizer steps."""
    lr: float = 3e-4
    """Peak learning rate (Adam)."""
    warmup_steps: int | None = None
    """Linear warmup steps; None means 5% of steps."""
    decay: str = "cosine"
    """Decay after warmup: 'cosine', 'linear' or 'constant'."""
    min_lr_ratio: float = 0.1
    """The decay's floor as a fraction of lr."""
    sparsity_coeff: float = 0.0
    """L1 coefficient (relu) or L0 coefficient (jumprelu); unused by topk, whose k sets sparsity."""
    sparsity_warmup_steps: int | None = None
    """Steps over which the sparsity coefficient ramps up from 0; None means 5% of steps."""
    auxk_coeff: float = 1 / 32
    """Weight of the AuxK dead-latent loss for topk/batchtopk (Gao et al. 2024 use 1/32)."""
    k_aux: int = 256
    """Dead latents AuxK may use per token."""
    dead_window: int = 1_000_000
    """A latent that has not fired for this many tokens is dead."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    checkpoint_every: int = 100
    """Steps between atomic checkpoints."""
    collect_every: int = 1
    """Steps between top-k collector updates."""
    log_every: int = 10
    """Steps between history rows."""

    def __post_init__(self):
        if self.steps < 1 or min(self.checkpoint_every, self.collect_every, self.log_every, self.k_aux) < 1:
            raise ValueError(f"steps, checkpoint_every, collect_every, log_every and k_aux must be >= 1: {self}")
        if self.dead_window < 1 or self.grad_clip <= 0 or self.sparsity_coeff < 0 or self.auxk_coeff < 0:
            raise ValueError(f"dead_window and grad_clip must be > 0, coefficients >= 0: {self}")

    @property
    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(self.steps, self.lr, self.warmup_steps, self.decay, self.min_lr_ratio,
                              self.sparsity_warmup_steps)


class Trainer:
    """Trains `transcoder` on batches from `store`; checkpoints and history go to `run_dir` when given."""

    def __init__(self, transcoder, store, cfg: TrainConfig, run_dir=None, collector=None, config_dict=None):
        self.tc, self.store, self.cfg, self.collector = transcoder, store, cfg, collector
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_dict = config_dict or {}
        self.optimizer = torch.optim.Adam(transcoder.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule)
        device = transcoder.W_dec.device
        self.since_fired = torch.zeros(transcoder.cfg.d_latent, dtype=torch.long, device=device)
        self.step = 0
        self.tokens_seen: int | None = 0  # all ranks' tokens; None = recount (a checkpoint from before it)
        # Inputs and targets are scaled so that their mean norm is sqrt(width) (as SAELens and sparsify do):
        # SmolLM2's layer-8 MLP output is ~10x larger than its input, and unscaled the encoder needs hundreds
        # of Adam steps just to grow. `export()` folds the scales back into the weights.
        self.scales = torch.zeros(2, dtype=torch.float64)
        self.normalize = transcoder.cfg.activation != "relu"  # relu's L1 is weighted by decoder norms instead

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None, progress: bool = True) -> None:
        """Train until `cfg.steps` (or `stop_at`, which simulates an interruption)."""
        end = min(self.cfg.steps, stop_at or self.cfg.steps)
        bar = tqdm(range(self.step, end), initial=self.step, total=self.cfg.steps, disable=not progress,
                   desc="train")
        tick, tokens = time.perf_counter(), 0
        for step in bar:
            batch = self.store.get_batch_with_tokens()
            out, y, loss = self.train_step(batch.x_in, batch.y_out, step)
            if self.collector is not None and step % self.cfg.collect_every == 0:
                self.collector.update(self._acts_for_collector(out), batch.global_ids.to(y.device), step)
            tokens += self._count_tokens(len(y))
            self.step = step + 1
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                row = self._log(out, y, loss, tokens / (time.perf_counter() - tick))
                bar.set_postfix(loss=f"{row['loss']:.4g}", fvu=f"{row['fvu']:.3f}", l0=f"{row['l0']:.1f}",
                                tok_s=f"{row['tokens_per_s']:.0f}")
                tick, tokens = time.perf_counter(), 0
            if self.run_dir is not None and (self.step % self.cfg.checkpoint_every == 0 or self.step == end):
                # a collective under torchrun: every rank calls it, rank 0 writes
                checkpoint.save(self)

    def train_step(self, x, y, step: int):
        """Forward, loss, backward, clip, optimizer and schedule step; returns `(out, y, loss)`."""
        x, y = x.to(self.tc.W_dec), y.to(self.tc.W_dec)
        if step == 0:
            self._start(x, y)
        x, y = x * float(self.scales[0]), y * float(self.scales[1])
        if step == 0:
            self.tc.init_b_dec(y)  # start from the mean-ablation baseline of every rank's first batch
        out = self.tc(x)
        loss = self.loss(out, x, y, step)
        self._check_finite(loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.tc.parameters())
        if self.normalize:
            self.tc.remove_parallel_grad_()
        torch.nn.utils.clip_grad_norm_(self.tc.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.normalize:
            self.tc.normalize_decoder_()
        self._track_dead(out, len(y))
        return out, y, loss.detach()

    @torch.no_grad()
    def _start(self, x, y) -> None:
        """Step 0: every rank takes rank 0's weights, and the scales come from all ranks' first batches."""
        distributed.broadcast_([*self.tc.parameters(), *self.tc.buffers()])
        sums = torch.stack([x.norm(dim=1).double().sum(), y.norm(dim=1).double().sum(),
                            torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)])
        sums = distributed.reduce_across_ranks(sums, "sum").cpu()
        widths = torch.tensor([x.shape[1], y.shape[1]], dtype=torch.float64)
        self.scales = widths.sqrt() * sums[2] / sums[:2]

    def _check_finite(self, loss, step: int) -> None:
        # Every rank must stop, or the others would wait for its gradients forever.
        bad = distributed.any_rank(~torch.isfinite(loss.detach()).reshape(1))
        if bad.item():
            value = loss.item() if not torch.isfinite(loss) else "not finite on another rank"
            raise FloatingPointError(f"loss is {value} at step {step}; stopped before the optimizer step, so "
                                     "no checkpoint holds poisoned weights (lower the lr or check the inputs)")

    def _count_tokens(self, rows: int) -> int:
        """Add one step of every rank's tokens (each rank's batch has `rows` rows) to tokens_seen; return it."""
        world = distributed.rank_world()[1]
        if self.tokens_seen is None:  # every earlier step had this batch size too
            self.tokens_seen = self.step * rows * world
        self.tokens_seen += rows * world
        return rows * world

    def export(self):
        """A copy of the transcoder for raw (unscaled) activations: scales folded into the weights."""
        import copy
        tc = copy.deepcopy(self.tc)
        tc.fold_scales_(float(self.scales[0]), float(self.scales[1]))
        return tc

    def resume(self) -> bool:
        """Load the run folder's latest checkpoint, if any; True when one was loaded."""
        path = checkpoint.latest(self.run_dir) if self.run_dir is not None else None
        if path is None:
            return False
        checkpoint.load(self, path)
        return True

    def loss(self, out, x, y, step: int) -> torch.Tensor:
        """Reconstruction plus the activation's sparsity or dead-latent term."""
        loss = mse_loss(out.y_hat, y)
        act, coeff = self.tc.cfg.activation, self.cfg.sparsity_coeff * sparsity_multiplier(step, self.cfg.schedule)
        if act == "relu" and coeff > 0:
            loss = loss + coeff * l1_penalty(out.acts, self.tc.W_dec)
        elif act == "jumprelu" and coeff > 0:
            loss = loss + coeff * self.tc.l0_penalty(out.pre_acts)
        elif act in ("topk", "batchtopk") and self.cfg.auxk_coeff > 0:
            dead = self.since_fired >= self.cfg.dead_window
            if dead.any():
                cols = self._aux_columns(out.pre_acts, dead)
                # Pre-activations of those dead latents, with gradient (TopK's out.pre_acts has none).
                pre_dead = torch.addmm(self.tc.b_enc[cols], x, self.tc.W_enc[:, cols])
                aux = auxk_loss(pre_dead, y - out.y_hat, self.tc.W_dec[cols], torch.ones_like(cols, dtype=torch.bool),
                                self.cfg.k_aux)
                loss = loss + self.cfg.auxk_coeff * aux
        return loss

    AUX_MAX_LATENTS = 1024

    @torch.no_grad()
    def _aux_columns(self, pre_BL: torch.Tensor, dead_L: torch.Tensor) -> torch.Tensor:
        """The dead latents AuxK trains: all of them, or the AUX_MAX_LATENTS whose largest pre-activation in this
        batch is highest (those are the ones AuxK's per-token top-k_aux would pick), so its cost stays bounded
        when many latents are dead."""
        cols = dead_L.nonzero()[:, 0]
        if len(cols) > self.AUX_MAX_LATENTS:
            best = pre_BL.detach()[:, cols].amax(0).topk(self.AUX_MAX_LATENTS).indices
            cols = cols[best.sort().values]
        return cols

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _track_dead(self, out, n_tokens: int) -> None:
        fired = distributed.any_rank((out.acts > 0).any(0))
        self.since_fired += n_tokens * distributed.rank_world()[1]
        self.since_fired[fired] = 0

    @staticmethod
    def _acts_for_collector(out):
        return (out.top_idx, out.top_vals.detach()) if out.top_idx is not None else out.acts.detach()

    @torch.no_grad()
    def _log(self, out, y, loss, tokens_per_s: float) -> dict:
        from kit.evaluate import fvu
        row = {"step": self.step, "tokens": self.tokens_seen, "lr": self.scheduler.get_last_lr()[0],
               "loss": loss.item(), "fvu": fvu(y, out.y_hat).item(),
               "l0": (out.acts > 0).sum(-1).float().mean().item(),
               "dead_frac": (self.since_fired >= self.cfg.dead_window).float().mean().item(),
               "tokens_per_s": tokens_per_s}
        if self.run_dir is not None and distributed.rank_world()[0] == 0:
            path = self.run_dir / "history.csv"
            new = not path.exists()
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, HISTORY_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
        return row

    @property
    def dead_fraction(self) -> float:
        """Share of latents that have not fired in the last `dead_window` tokens."""
        return (self.since_fired >= self.cfg.dead_window).float().mean().item()
