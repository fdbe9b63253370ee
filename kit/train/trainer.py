"""The training loop: one visible `for` loop over batches from any store-like object.

The trainer never touches the language model: anything with `get_batch_with_tokens()`, `state_dict()` and
`load_state_dict()` feeds it, so it is tested on synthetic tensors as well as on the real store.
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kit import distributed

from kit.train import checkpoint, precision
from kit.config import TrainConfig
from kit.io import flatten, unflatten
from kit.model.loss import fvu
from kit.train.objective import objective, reset_adam_moments
from kit.train.schedule import ScheduleConfig, make_scheduler, sparsity_multiplier

HISTORY_FIELDS = ["step", "tokens", "lr", "loss", "fvu", "l0", "dead_frac", "tokens_per_s"]


class Trainer:
    """Trains `transcoder` on batches from `store`; checkpoints and history go to `run_dir` when given."""

    def __init__(self, transcoder, store, cfg: TrainConfig, run_dir=None, collector=None, config_dict=None):
        self.tc, self.store, self.cfg, self.collector = transcoder, store, cfg, collector
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_dict = config_dict or {}
        params = transcoder.parameters() if cfg.b_enc_lr_scale == 1 else [  # one group each, in the same order
            {"params": [p], "lr": cfg.lr * (scale := cfg.b_enc_lr_scale if n == "b_enc" else 1), "lr_scale": scale}
            for n, p in transcoder.named_parameters()]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        self.schedule = ScheduleConfig.of(cfg)
        self.scheduler = make_scheduler(self.optimizer, self.schedule)
        device = transcoder.W_dec.device
        self.since_fired = torch.zeros(transcoder.cfg.d_latent, dtype=torch.long, device=device)
        self.step = 0
        self.tokens_seen: int | None = 0  # all ranks' tokens; None = recount (a checkpoint from before it)
        self.busy_seconds = 0.0  # time spent in this trainer's own steps (a sweep's trainers share the store)
        self._tick, self._tokens = None, 0  # tokens/s since the last history row
        # Inputs and targets are scaled so that their mean norm is sqrt(width) (as SAELens and sparsify do):
        # SmolLM2's layer-8 MLP output is ~10x larger than its input, and unscaled the encoder needs hundreds
        # of Adam steps just to grow. `export()` folds the scales back into the weights.
        self.scales = torch.zeros(2, dtype=torch.float64)
        # With cfg.center_input the scaled inputs are also centred (x * scale - shift, shift = the scaled mean of the
        # first batch): see TrainConfig.center_input. `export()` folds the shift into b_enc.
        self.shift = torch.zeros(transcoder.cfg.d_in, dtype=torch.float64)
        self._shift_x = None  # shift on the inputs' device and dtype, made once (not a host copy every step)
        self.normalize = transcoder.cfg.activation != "relu"  # relu's L1 is weighted by decoder norms instead
        self.precision = precision.choose(cfg.autocast, device, transcoder.W_dec.dtype)
        if distributed.rank_world()[0] == 0:
            print(self.precision.describe(), flush=True)

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None, progress: bool = True) -> None:
        """Train until `cfg.steps` (or `stop_at`, which simulates an interruption)."""
        end = min(self.cfg.steps, stop_at or self.cfg.steps)
        bar = tqdm(range(self.step, end), initial=self.step, total=self.cfg.steps, disable=not progress,
                   desc="train")
        for _ in bar:
            row = self.advance(self.store.get_batch_with_tokens(), end)
            if row is not None:
                bar.set_postfix(loss=f"{row['loss']:.4g}", fvu=f"{row['fvu']:.3f}", l0=f"{row['l0']:.1f}",
                                tok_s=f"{row['tokens_per_s']:.0f}")

    def advance(self, batch, end: int | None = None) -> dict | None:
        """One step on `batch` (a `TokenBatch`): train, collect, log, and checkpoint every `checkpoint_every` steps
        and at `end`; returns the history row when this step logs one. A sweep calls it for each of its trainers
        with the same batch."""
        step, start = self.step, time.perf_counter()
        if self._tick is None:
            self._tick = start
        out, y, loss = self.train_step(batch.x_in, batch.y_out, step)
        if self.collector is not None and step % self.cfg.collect_every == 0:
            self.collector.update(self._acts_for_collector(out), batch.global_ids.to(y.device), step)
        self._tokens += self._count_tokens(len(y))
        self.step = step + 1
        row = None
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
            row = self._log(out, y, loss, self._tokens / (time.perf_counter() - self._tick))
            self._tick, self._tokens = time.perf_counter(), 0
        self.busy_seconds += time.perf_counter() - start
        if self.run_dir is not None and (self.step % self.cfg.checkpoint_every == 0 or self.step == (end or -1)
                                         or self.step == self.cfg.steps):
            # a collective under torchrun: every rank calls it, rank 0 writes
            checkpoint.save(self)
        return row

    def train_step(self, x, y, step: int):
        """Forward, loss, backward, clip, optimizer and schedule step; returns `(out, y, loss)`."""
        x, y = x.to(self.tc.W_dec), y.to(self.tc.W_dec)
        if step == 0:
            self._start(x, y)
        if self._shift_x is None:
            self._shift_x = self.shift.to(x)
        x, y = x * float(self.scales[0]) - self._shift_x, y * float(self.scales[1])
        if step == 0:
            self.tc.init_b_dec(y)  # start from the mean-ablation baseline of every rank's first batch
        with precision.autocast(self.precision, x.device):  # the backward runs outside, as torch.autocast asks
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
        sums = torch.cat([x.norm(dim=1).double().sum().reshape(1), y.norm(dim=1).double().sum().reshape(1),
                          torch.tensor([float(len(y))], dtype=torch.float64, device=y.device), x.double().sum(0)])
        sums = distributed.reduce_across_ranks(sums, "sum").cpu()
        widths = torch.tensor([x.shape[1], y.shape[1]], dtype=torch.float64)
        self.scales = widths.sqrt() * sums[2] / sums[:2]
        self.shift, self._shift_x = sums[3:] / sums[2] * self.scales[0] * float(self.cfg.center_input), None

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
        tc.fold_input_shift_(self.shift)
        tc.fold_scales_(float(self.scales[0]), float(self.scales[1]))
        return tc

    def resume(self, at_most: int | None = None) -> bool:
        """Load the run folder's newest intact checkpoint (none after step `at_most`), if any; True when one was
        loaded. A damaged checkpoint is named on stderr and skipped for the one before it; DamagedCheckpoint when
        all are."""
        paths = checkpoint.candidates(self.run_dir) if self.run_dir is not None else []
        paths = [p for p in paths if at_most is None or int(p.name.removeprefix("step_")) <= at_most]
        damaged = []
        for path in paths:
            try:
                checkpoint.load(self, path)
            except checkpoint.DamagedCheckpoint as err:
                damaged.append(str(err))
                continue
            if distributed.rank_world()[0] == 0:
                for line in damaged:
                    print(f"{line}; resuming from {path.name} instead", file=sys.stderr, flush=True)
            return True
        if damaged:
            raise checkpoint.DamagedCheckpoint(f"no intact checkpoint in {self.run_dir / 'checkpoints'}: "
                                               f"{'; '.join(damaged)}")
        return False

    def loss(self, out, x, y, step: int) -> torch.Tensor:
        """Reconstruction plus the activation's sparsity or dead-latent term (see `kit.train.objective`)."""
        coeff = self.cfg.sparsity_coeff * sparsity_multiplier(step, self.schedule)
        return objective(self.tc, self.cfg, out, x, y, coeff,
                         self.since_fired >= (self.cfg.auxk_window or self.cfg.dead_window))

    # ---- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """`(tensors, meta)`: every piece of training state, as flat safetensors-ready tensors and JSON."""
        tensors = {"since_fired": self.since_fired.cpu(), "scales": self.scales, "shift": self.shift}
        flatten("transcoder", self.tc.state_dict(), tensors)
        opt = self.optimizer.state_dict()
        flatten("optimizer", {str(k): v for k, v in opt["state"].items()}, tensors)
        if self.collector is not None:
            flatten("collector", self.collector.state_dict(), tensors)
        meta = {"step": self.step, "tokens_seen": self.tokens_seen, "scheduler": self.scheduler.state_dict(),
                "param_groups": opt["param_groups"], "config": self.config_dict}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore `state_dict()` (the store's position is the store's own state)."""
        self.tc.load_state_dict(unflatten("transcoder", tensors))
        state = {int(k): v for k, v in unflatten("optimizer", tensors).items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.since_fired.copy_(tensors["since_fired"])
        self.scales = tensors["scales"].cpu()
        self.shift, self._shift_x = tensors.get("shift", torch.zeros_like(self.shift)).cpu(), None  # older: no shift
        if self.collector is not None:
            self.collector.load_state_dict(unflatten("collector", tensors))
        self.step = meta["step"]
        self.tokens_seen = meta.get("tokens_seen")  # None in older checkpoints: the trainer recounts it

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _track_dead(self, out, n_tokens: int) -> None:
        window = self.cfg.auxk_window or self.cfg.dead_window
        reset = self.cfg.auxk_reset_adam and self.cfg.auxk_coeff > 0 and self.tc.cfg.activation in ("topk", "batchtopk")
        before = self.since_fired >= window if reset else None
        fired = distributed.any_rank((out.acts > 0).any(0))
        self.since_fired += n_tokens * distributed.rank_world()[1]
        self.since_fired[fired] = 0
        if reset:
            reset_adam_moments(self.optimizer, self.tc, (self.since_fired >= window) & ~before)

    @staticmethod
    def _acts_for_collector(out):
        return (out.top_idx, out.top_vals.detach()) if out.top_idx is not None else out.acts.detach()

    @torch.no_grad()
    def _log(self, out, y, loss, tokens_per_s: float) -> dict:
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
