"""IntervalSampler: per latent, a few contexts from each activation bin, kept by streaming reservoir sampling.

Also holds the vectorized ranking helpers that it shares with `kit.collect.collector`: entries are ordered by packing
(group, score) into one int64 and running torch's stable sort, which is a radix sort and ~10x faster on a CPU than
sorting floats.

Shape suffixes: N entries, B batch rows, L latents, S slots per latent (n_intervals * per_interval).
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mul32(h, c: int):
    """Low 32 bits of h * c for h, c < 2**32, without int64 overflow (signed overflow is undefined in C++)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    """murmur3's finaliser: a bijection of 32-bit values that spreads every input bit (ints or int64 tensors)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def context_key(ctx_N: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform pseudo-random key in [0, 2**32) per context index (int64); a context always gets the same key."""
    lo, hi = ctx_N & _M32, (ctx_N >> 32) & _M32
    return _fmix32(_fmix32(lo ^ _fmix32(seed & _M32)) ^ hi)


def desc_value(v_N: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2**32) that sorts ascending where the float32 values sort descending (IEEE bits, flipped)."""
    bits = v_N.float().contiguous().view(torch.int32).long()
    return (2**31 - 1) - torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def rank_in_groups(group_N: torch.Tensor, desc_N: torch.Tensor, gid_N: torch.Tensor):
    """Sort entries by (group, desc, gid) ascending; return `(order_N, rank_N)`, rank counted within each group.

    `group_N` must lie in [0, 2**31) and `desc_N` in [0, 2**32). Equal scores go to the lower global id: when
    (group, desc) pairs repeat, the entries are sorted by gid first and the stable sort keeps that order.
    """
    packed = group_N * 2**32 + desc_N
    order = torch.sort(packed, stable=True).indices
    if len(order) > 1 and bool((packed[order[1:]] == packed[order[:-1]]).any()):
        order = torch.sort(gid_N, stable=True).indices
        order = order[torch.sort(packed[order], stable=True).indices]
    g = group_N[order]
    idx = torch.arange(len(g), device=g.device)
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    return order, idx - torch.cummax(torch.where(start, idx, 0), 0).values


def pair_groups(a_N: torch.Tensor, b_N: torch.Tensor) -> torch.Tensor:
    """Group ids in [0, 2**31) for (a, b) pairs of non-negative ints: equal pairs, equal ids."""
    if len(a_N) == 0:
        return a_N
    span = int(b_N.max()) + 1
    pair = a_N * span + b_N
    return pair if int(a_N.max()) * span + span < 2**31 else torch.unique(pair, return_inverse=True)[1]


class IntervalSampler:
    """Per latent, up to `per_interval` contexts from each of `n_intervals` equal bins of value / running max.

    The reservoir: every context has a fixed random key (`context_key`), and each (latent, bin) keeps the contexts
    with the highest keys (ties: lower global id) among those offered to it, a uniform sample of them. Keys hashed
    from the context, rather than drawn from a generator, recognise a context that comes back, make merges
    order-free and leave no generator state to checkpoint. A context
    counts once per latent: the first sample a latent keeps of it stays, and later batches of that context are
    skipped. Each context's offer is its maximum within the batch, binned by value / the latent's running max.
    Re-binning: when a latent's running max rises, its samples are first re-binned against the new max (a bin
    that overflows keeps its highest keys; upper bins that empty refill from this and later batches only), and
    then the batch's contexts are offered.
    """

    def __init__(self, n_latents: int, n_intervals: int, per_interval: int, ctx_len: int, seed: int, device):
        self.n, self.per, self.ctx_len, self.seed = n_intervals, per_interval, ctx_len, seed
        shape = (n_latents, n_intervals * per_interval)
        self.vals_LS = torch.full(shape, -torch.inf, device=device)
        self.gids_LS = torch.full(shape, -1, dtype=torch.long, device=device)
        self.steps_LS = torch.full(shape, -1, dtype=torch.long, device=device)

    def bins(self, v_N: torch.Tensor, max_N: torch.Tensor) -> torch.Tensor:
        """Bin of each value: floor(n_intervals * v / max), the max itself going to the top bin."""
        return (v_N / max_N * self.n).floor().clamp(0, self.n - 1).long()

    def min_keys(self) -> torch.Tensor:
        """[L, n_intervals] key a newcomer must reach to enter each bin: its last slot's key, -1 while not full."""
        last_LN = self.gids_LS.view(len(self.gids_LS), self.n, self.per)[:, :, -1].contiguous()
        return torch.where(last_LN >= 0, context_key(last_LN // self.ctx_len, self.seed), -1)

    def token_filter(self, min_keys_LN, max_L: torch.Tensor, low_L=None, cut: int = 0):
        """`(vmin_L, kmin_L)`: a token can matter only if its value >= vmin or its context key >= kmin.

        A token binned in a full bin needs that bin's entry key, so a key at least the smallest entry key of all
        bins up to its own (a prefix minimum) is needed. A latent's tokens from the first bin whose prefix minimum
        falls below `cut` upward pass by value, those below it by key, so every key bar is >= `cut`; a latent
        whose first bin is already below takes all its tokens (vmin -inf, kmin 2**32). Both tests pass more often
        as the value grows, so whenever any token of a context passes, its maximum does too, and the per-context
        maxima stay exact. Bins below `low_L` (the batch's smallest value, when known) receive nothing: skipped.
        """
        if low_L is not None:
            low_bin_L = torch.where(torch.isfinite(low_L) & (max_L > 0), self.bins(low_L, max_L), 0)
            empty_LN = torch.arange(self.n, device=max_L.device) < low_bin_L[:, None]
            min_keys_LN = torch.where(empty_LN, 2**32, min_keys_LN)
        prefix_LN = torch.cummin(min_keys_LN, 1).values
        by_key_L = (prefix_LN >= cut).sum(1)  # bins whose tokens can be told apart by key alone
        kmin_L = prefix_LN.gather(1, (by_key_L - 1).clamp(min=0)[:, None])[:, 0]
        # a relative margin keeps every value that `bins` puts at or above the first bin passed by value
        vmin_L = torch.where(by_key_L < self.n, by_key_L / self.n * max_L * (1 - 1e-5), torch.inf)
        take_all = by_key_L == 0
        return torch.where(take_all, -torch.inf, vmin_L), torch.where(take_all, 2**32, kmin_L)

    def update(self, l_N, v_N, gid_N, key_N, min_keys_LN, max_L: torch.Tensor, step: int) -> None:
        """Offer per-context maxima (one entry per latent and context; `key_N` their context keys). The running
        max is `max_L`, the samples already re-binned to it, and `min_keys_LN` is `min_keys()` since."""
        enter = key_N >= min_keys_LN[l_N, self.bins(v_N, max_L[l_N])]
        l_N, v_N, gid_N, key_N = l_N[enter], v_N[enter], gid_N[enter], key_N[enter]
        new = ~(self.gids_LS[l_N] // self.ctx_len == (gid_N // self.ctx_len)[:, None]).any(1)
        self.refill(torch.unique(l_N[new]), l_N[new], v_N[new], gid_N[new], key_N[new],
                    torch.full_like(gid_N[new], step), max_L)

    def rebin(self, rows_R: torch.Tensor, max_L: torch.Tensor) -> None:
        """Re-bin latents whose running max rose to `max_L`; overflowing bins keep their highest keys."""
        none = rows_R[:0]
        self.refill(rows_R, none, self.vals_LS.new_empty(0), none, none, none, max_L)

    def refill(self, rows_R, l_N, v_N, gid_N, key_N, steps_N, max_L: torch.Tensor) -> None:
        """Rebuild latents `rows_R` from what they hold plus new entries (whose contexts they do not hold)."""
        r_N, hv_N, hg_N, hs_N = held_entries(self.vals_LS[rows_R], self.gids_LS[rows_R], self.steps_LS[rows_R])
        l_N, v_N = torch.cat([rows_R[r_N], l_N]), torch.cat([hv_N, v_N.float()])
        key_N = torch.cat([context_key(hg_N // self.ctx_len, self.seed), key_N])
        gid_N, steps_N = torch.cat([hg_N, gid_N]), torch.cat([hs_N, steps_N])
        bin_N = self.bins(v_N, max_L[l_N])
        order, rank = rank_in_groups(l_N * self.n + bin_N, _M32 - key_N, gid_N)
        order, rank = order[rank < self.per], rank[rank < self.per]
        for buf, fill in ((self.vals_LS, -torch.inf), (self.gids_LS, -1), (self.steps_LS, -1)):
            buf[rows_R] = fill
        rows, slots = l_N[order], bin_N[order] * self.per + rank
        self.vals_LS[rows, slots], self.gids_LS[rows, slots] = v_N[order], gid_N[order]
        self.steps_LS[rows, slots] = steps_N[order]

    def entries(self):
        """`(l_N, v_N, gid_N, steps_N)` of every held sample."""
        return held_entries(self.vals_LS, self.gids_LS, self.steps_LS)

    def clear(self) -> None:
        for buf, fill in ((self.vals_LS, -torch.inf), (self.gids_LS, -1), (self.steps_LS, -1)):
            buf.fill_(fill)


def held_entries(vals_LW, gids_LW, steps_LW):
    """Flat `(l_N, v_N, gid_N, steps_N)` of the filled slots of [L, W] buffers."""
    held = gids_LW >= 0
    return held.nonzero()[:, 0], vals_LW[held], gids_LW[held], steps_LW[held]


def best_per_context(l_N, v_N, gid_N, ctx_len: int) -> torch.Tensor:
    """Indices of one entry per (latent, context): the highest value, then the lowest global id."""
    order, rank = rank_in_groups(pair_groups(l_N, gid_N // ctx_len), desc_value(v_N), gid_N)
    return order[rank == 0]
