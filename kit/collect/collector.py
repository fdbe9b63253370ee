"""TopKCollector: while a transcoder trains, keep for every latent the contexts that activate it most.

The state is a `[n_latents, k]` tensor triple (value, global id, step) on the training device, sorted per latent
by (value desc, global id asc): equal values go to the lower global id. An update turns a batch into candidates
(each latent's maximum within each context of the batch), merges those with what is held (a context counts once
per latent and keeps its maximum; `step` records the update that set the value) and re-ranks only the latents
that changed. Everything is vectorized; the result equals a brute-force top-k over all (latent, context) maxima.

Most tokens are dropped before any sorting, by per-latent bars that provably cannot drop a winner: a value below
the k-th held one never enters, and interval samples have bars of their own (`IntervalSampler.token_filter`).
Global ids follow the store: global_id = context_index * ctx_len + position, position 0 being BOS.
Shapes: B batch rows, L latents, K slots (or active latents per token), M newcomers per row, N entries.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kit.collect.intervals import (IntervalSampler, best_per_context, context_key, desc_value, held_entries, pair_groups,
                                   rank_in_groups)
from kit.collect.checks import check_acts, check_ids
from kit.collect.samples import entries_frame
from kit.config import CollectorConfig


class TopKCollector:
    """Top-k contexts per latent plus interval samples, from `update(acts, global_ids_B, step)` calls."""

    def __init__(self, n_latents: int, config: CollectorConfig, device="cpu"):
        if isinstance(n_latents, bool) or not isinstance(n_latents, int) or n_latents < 1:
            raise ValueError(f"n_latents must be a positive int, got {n_latents!r}")
        self.n_latents, self.config, self.device = n_latents, config, torch.device(device)
        shape = (n_latents, config.k)
        self.top_vals = torch.full(shape, -torch.inf, device=self.device)
        self.top_gids = torch.full(shape, -1, dtype=torch.long, device=self.device)
        self.top_steps = torch.full(shape, -1, dtype=torch.long, device=self.device)
        self.intervals = IntervalSampler(n_latents, config.n_intervals, config.per_interval, config.ctx_len,
                                         config.seed, self.device) if config.n_intervals else None
        self._mask_BL = None  # scratch for dense batches on a CPU, not state

    # ---- collecting ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, acts, global_ids_B: torch.Tensor, step: int) -> None:
        """Offer one batch: `acts` is `acts_BL` (dense) or `(top_idx_BK, top_vals_BK)` (TopK, never densified)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        sparse = check_acts(acts, self.n_latents, self.device)
        gid_B = check_ids(global_ids_B, acts, self.config.ctx_len, self.device)
        if len(gid_B) == 0:
            return
        ctx_C, ctx_B = torch.unique(gid_B // self.config.ctx_len, return_inverse=True)
        # a token matters only if value >= vmin (below the k-th held value it never enters) or key >= kmin
        vmin_L, key_B, kmin_L = self.top_vals[:, -1], None, None
        if self.intervals is not None:
            batch_max_L, low_L = self._batch_range(acts, sparse)
            max_L = torch.fmax(self.top_vals[:, 0], batch_max_L)  # the running max, once this batch is in
            self.intervals.rebin((max_L > self.top_vals[:, 0]).nonzero()[:, 0], max_L)
            min_keys_LN, key_B = self.intervals.min_keys(), context_key(ctx_C, self.config.seed)[ctx_B]
            # dense acts get a second look by key only at rows in the top sixteenth of keys (see _dense_entries)
            cut = 0 if sparse else int(key_B.kthvalue(len(key_B) - len(key_B) // 16).values)
            interval_vmin_L, kmin_L = self.intervals.token_filter(min_keys_LN, max_L, low_L, cut)
            vmin_L = torch.minimum(vmin_L, interval_vmin_L)
        b_N, l_N, v_N = (self._sparse_entries if sparse else self._dense_entries)(acts, vmin_L, key_B, kmin_L)
        # each latent's best token in each context of the batch: max value, then lowest global id
        order, rank = rank_in_groups(pair_groups(l_N, ctx_B[b_N]), desc_value(v_N), gid_B[b_N])
        b_N, l_N, v_N = b_N[order[rank == 0]], l_N[order[rank == 0]], v_N[order[rank == 0]]
        self._merge_top(l_N, v_N, gid_B[b_N], step)
        if self.intervals is not None:
            self.intervals.update(l_N, v_N, gid_B[b_N], key_B[b_N], min_keys_LN, max_L, step)

    def _batch_range(self, acts, sparse: bool):
        """[L] float32 maximum of each latent in the batch (-inf where nothing is above the threshold), and for
        sparse acts the minimum above the threshold (None for dense acts: a second pass would cost too much)."""
        thr = self.config.threshold
        if not sparse:
            max_L = acts.detach().amax(0).float()
            return torch.where(max_L > thr, max_L, -torch.inf), None
        idx_N, v_N = acts[0].to(self.device).flatten().long(), acts[1].flatten().float()
        above = v_N > thr
        empty = torch.full((self.n_latents,), torch.inf, device=self.device)
        low_L = empty.scatter_reduce(0, idx_N, torch.where(above, v_N, torch.inf), "amin")
        max_L = (-empty).scatter_reduce(0, idx_N, torch.where(above, v_N, -torch.inf), "amax")
        return max_L, low_L

    def _sparse_entries(self, acts, vmin_L, key_B, kmin_L):
        """`(b_N, l_N, v_N)`: row, latent and float32 value of the (top_idx_BK, top_vals_BK) entries that pass."""
        idx_BK, vals_BK = acts
        idx_BK = idx_BK.to(self.device).long()
        v_BK = vals_BK.float()
        keep_BK = v_BK >= vmin_L[idx_BK]
        if kmin_L is not None:
            keep_BK |= key_B[:, None] >= kmin_L[idx_BK]
        flat = (keep_BK & (v_BK > self.config.threshold)).flatten().nonzero()[:, 0]
        return flat // idx_BK.shape[1], idx_BK.flatten()[flat], v_BK.flatten()[flat]

    def _dense_entries(self, acts_BL, vmin_L, key_B, kmin_L):
        """`(b_N, l_N, v_N)` of the dense entries that pass, in about one pass over [B, L].

        Every key bar is at least the batch's top-sixteenth row key (see `update`), so only those rows need a
        second look by key; everything else passes or fails by value alone.
        """
        thr = torch.tensor([self.config.threshold], dtype=torch.float32, device=self.device)
        above_1 = torch.nextafter(thr, torch.tensor(torch.inf, device=self.device))  # v > thr <=> v >= above
        bars = [acts_BL.detach(), vmin_L.clamp(min=above_1), above_1, key_B, kmin_L]
        # numpy's SIMD compare and nonzero run ~4x faster than torch's on a CPU (measured in bench/collector.py)
        if _numpy_ok(acts_BL):
            bars = [None if t is None else t.numpy() for t in bars]
        acts, vmin, above, key, kmin = bars
        if isinstance(acts, np.ndarray):  # a reused output buffer saves the page faults of a fresh [B, L] mask
            if self._mask_BL is None or self._mask_BL.shape != acts.shape:
                self._mask_BL = np.empty(acts.shape, dtype=bool)
            mask = np.greater_equal(acts, vmin, out=self._mask_BL)
        else:
            mask = acts >= vmin  # float32 bars with a dimension promote bf16 acts: every path compares in float32
        if kmin is not None:
            rows = _flatnonzero(key >= kmin.min())
            mask[rows] |= (acts[rows] >= above) & (key[rows, None] >= kmin)
        flat = torch.as_tensor(_flatnonzero(mask), device=self.device)
        L = self.n_latents
        return flat // L, flat % L, acts_BL.detach().reshape(-1)[flat].float()

    def _merge_top(self, l_N, v_N, gid_N, step: int) -> None:
        """Merge per-context candidates (one per latent and context) into the held top-k."""
        kv, kg = self.top_vals[l_N, -1], self.top_gids[l_N, -1]
        ok = (v_N > kv) | ((v_N == kv) & (gid_N < kg))
        l_N, v_N, gid_N = l_N[ok], v_N[ok], gid_N[ok]
        match_NK = self.top_gids[l_N] // self.config.ctx_len == (gid_N // self.config.ctx_len)[:, None]
        hit, slot = match_NK.any(1), match_NK.long().argmax(1)
        hv, hg = self.top_vals[l_N, slot], self.top_gids[l_N, slot]
        better = (v_N > hv) | ((v_N == hv) & (gid_N < hg))
        self.top_gids[l_N[hit & better], slot[hit & better]] = -1  # the context's old entry makes way
        new = ~hit | better
        self._refill_top(l_N[new], v_N[new], gid_N[new], torch.full_like(gid_N[new], step))

    def _refill_top(self, l_N, v_N, gid_N, steps_N) -> None:
        """Merge new entries (contexts their latents do not hold; -1 ids in the buffers are empty slots) into the
        sorted rows. An entry's new slot counts who beats it, among the held entries and among the newcomers."""
        k = self.config.k
        order, new_rank = rank_in_groups(l_N, desc_value(v_N), gid_N)
        fits = new_rank < k  # beaten by k newcomers of its own latent, an entry cannot stay
        order, new_rank = order[fits], new_rank[fits]
        l_N, v_N, gid_N, steps_N = l_N[order], v_N[order], gid_N[order], steps_N[order]
        rows, row_N = torch.unique_consecutive(l_N, return_inverse=True)
        shape = (len(rows), int(new_rank.max()) + 1 if len(new_rank) else 0)
        nv_RM = torch.full(shape, -torch.inf, device=self.device).index_put_((row_N, new_rank), v_N)[:, :, None]
        ng_RM = torch.full(shape, 2**62, device=self.device).index_put_((row_N, new_rank), gid_N)[:, :, None]
        held_RK, hs_RK = self.top_gids[rows] >= 0, self.top_steps[rows]
        hv_RK = torch.where(held_RK, self.top_vals[rows], -torch.inf)[:, None]
        hg_RK = torch.where(held_RK, self.top_gids[rows], 2**62)[:, None]
        new_wins_RMK = (nv_RM > hv_RK) | ((nv_RM == hv_RK) & (ng_RM < hg_RK))  # no two entries tie on both
        held_slot_RK = held_RK.cumsum(1) - held_RK.long() + new_wins_RMK.sum(1)
        new_slot_N = new_rank + (~new_wins_RMK & held_RK[:, None]).sum(2)[row_N, new_rank]
        self.top_vals[rows], self.top_gids[rows], self.top_steps[rows] = -torch.inf, -1, -1
        r, i = (held_RK & (held_slot_RK < k)).nonzero().unbind(1)
        self._write_top(rows[r], held_slot_RK[r, i], hv_RK[r, 0, i], hg_RK[r, 0, i], hs_RK[r, i])
        ok = new_slot_N < k
        self._write_top(l_N[ok], new_slot_N[ok], v_N[ok], gid_N[ok], steps_N[ok])

    def _write_top(self, l_N, slot_N, v_N, gid_N, steps_N) -> None:
        self.top_vals[l_N, slot_N], self.top_gids[l_N, slot_N], self.top_steps[l_N, slot_N] = v_N, gid_N, steps_N

    @torch.no_grad()
    def merge(self, *others: TopKCollector) -> TopKCollector:
        """Absorb other collectors (e.g. other DDP ranks) in place and return self.

        The top-k then equals collecting the union of all their data. Interval samples are the union re-binned
        against the merged max, each bin keeping its highest keys (a context once per latent, at its maximum).
        """
        for other in others:
            if not isinstance(other, TopKCollector) or (other.n_latents, other.config) != (self.n_latents, self.config):
                raise ValueError("merge needs TopKCollectors with the same n_latents and config")
        parts = [self, *others]
        l_N, v_N, gid_N, steps_N = (torch.cat(col).to(self.device) for col in
                                    zip(*(held_entries(p.top_vals, p.top_gids, p.top_steps) for p in parts)))
        best = best_per_context(l_N, v_N, gid_N, self.config.ctx_len)
        for buf, fill in ((self.top_vals, -torch.inf), (self.top_gids, -1), (self.top_steps, -1)):
            buf.fill_(fill)  # every held entry is in the union; the refill ranks from it alone
        self._refill_top(l_N[best], v_N[best], gid_N[best], steps_N[best])
        if self.intervals is not None:
            l_N, v_N, gid_N, steps_N = (torch.cat(col).to(self.device) for col in
                                        zip(*(p.intervals.entries() for p in parts)))
            best = best_per_context(l_N, v_N, gid_N, self.config.ctx_len)
            self.intervals.clear()
            self.intervals.refill(torch.unique(l_N[best]), l_N[best], v_N[best], gid_N[best],
                                  context_key(gid_N[best] // self.config.ctx_len, self.config.seed), steps_N[best],
                                  self.top_vals[:, 0])
        return self

    def _buffers(self) -> dict[str, torch.Tensor]:
        bufs = {"top_vals": self.top_vals, "top_gids": self.top_gids, "top_steps": self.top_steps}
        if self.intervals is not None:
            bufs |= {"interval_vals": self.intervals.vals_LS, "interval_gids": self.intervals.gids_LS,
                     "interval_steps": self.intervals.steps_LS}
        return bufs

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): the buffers, plus ctx_len and seed to check on load."""
        state = {name: t.detach().clone() for name, t in self._buffers().items()}
        return state | {"ctx_len": torch.tensor(self.config.ctx_len), "seed": torch.tensor(self.config.seed)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()`; collection then continues exactly as if it had never stopped."""
        mine = self.state_dict()
        if set(state) != set(mine):
            raise ValueError(f"state has keys {sorted(state)}, this collector needs {sorted(mine)} "
                             f"(a collector with n_intervals=0 has no interval_* keys)")
        for name, t in mine.items():
            if state[name].shape != t.shape or (t.dim() == 0 and int(state[name]) != int(t)):
                shown = lambda x: x.item() if x.dim() == 0 else tuple(x.shape)  # noqa: E731
                raise ValueError(f"state[{name!r}] is {shown(state[name])}, this collector needs {shown(t)}")
        for name, buf in self._buffers().items():
            buf.copy_(state[name])

    def summary(self) -> dict:
        """Latents with at least one top sample, top samples held, and their mean over those latents."""
        filled_L = (self.top_gids >= 0).sum(1)
        with_samples, total = int((filled_L > 0).sum()), int(filled_L.sum())
        n_int = 0 if self.intervals is None else int((self.intervals.gids_LS >= 0).sum())
        return {"n_latents": self.n_latents, "latents_with_samples": with_samples, "total_samples": total,
                "avg_samples_per_latent": total / with_samples if with_samples else 0.0, "interval_samples": n_int}

    def __str__(self) -> str:
        s = self.summary()
        return (f"TopKCollector: {s['latents_with_samples']:,} of {s['n_latents']:,} latents have samples, "
                f"{s['total_samples']:,} top samples ({s['avg_samples_per_latent']:.1f} per latent with samples, "
                f"k={self.config.k}), {s['interval_samples']:,} interval samples")

    def samples(self) -> pd.DataFrame:
        """One row per held sample: latent, rank, activation, global_id, context_index, position, step, kind
        ("top" or "interval") and interval (the bin, -1 for top samples); rank counts within the bin."""
        l_N, v_N, gid_N, steps_N = held_entries(self.top_vals, self.top_gids, self.top_steps)
        rank_N = (self.top_gids >= 0).nonzero()[:, 1]
        frames = [(l_N, rank_N, v_N, gid_N, steps_N, "top", torch.full_like(l_N, -1))]
        if self.intervals is not None:
            slot_N = (self.intervals.gids_LS >= 0).nonzero()[:, 1]
            l_N, v_N, gid_N, steps_N = self.intervals.entries()
            per = self.config.per_interval
            frames.append((l_N, slot_N % per, v_N, gid_N, steps_N, "interval", slot_N // per))
        return pd.concat([entries_frame(*f, self.config.ctx_len) for f in frames], ignore_index=True)


def _numpy_ok(acts_BL: torch.Tensor) -> bool:  # the numpy mask path is faster on a CPU
    return acts_BL.device.type == "cpu" and acts_BL.dtype == torch.float32 and len(acts_BL) > 0


def _flatnonzero(mask):
    """Flat indices of the true entries of a numpy array or torch tensor."""
    return np.flatnonzero(mask) if isinstance(mask, np.ndarray) else mask.reshape(-1).nonzero()[:, 0]
