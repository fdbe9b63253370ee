"""Time the TopKCollector against what it rides on and against what it replaces, on one shuffled token stream.

1. Share: one collector update as a share of one TopK transcoder train step (minimal inline TopK encoder,
   embedding_bag decoder, MSE, backward, Adam), at d_in = d_out = 576, k = 32, 4096 tokens, ctx_len 128, for
   d_latent 9216 and 16384. Goal <= 5%.
2. Speedup over a per-latent heapq collector (a dict of the best token per (latent, context) in the batch, then
   per-latent heaps that keep one entry per context) at L0 32 (TopK pairs) and L0 ~256 (dense ReLU-like acts).
   The heap is timed on fewer batches and compared per token. Goals >= 10x and >= 50x.

The stream mimics the store: 256 contexts' tokens shuffled together per refill, cut into batches.

    python bench/collector.py [--updates 30] [--heap-batches 2] [--threads N]
"""
import argparse
import heapq
import os
import statistics
import time

import torch
import torch.nn.functional as F

from kit.collector import CollectorConfig, TopKCollector

D, K, BATCH, CTX_LEN, REFILL = 576, 32, 4096, 128, 256


def stream_gids(n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """Global ids of successive batches: every non-BOS token of 256 contexts per refill, shuffled."""
    g, out, refill = torch.Generator().manual_seed(seed), [], 0
    while len(out) < n_batches:
        ctx = torch.arange(refill * REFILL, (refill + 1) * REFILL)
        gids = (ctx[:, None] * CTX_LEN + torch.arange(1, CTX_LEN)).flatten()
        gids = gids[torch.randperm(len(gids), generator=g)]
        out += list(gids[: len(gids) // BATCH * BATCH].split(BATCH))
        refill += 1
    return out[:n_batches]


class TopKStep:
    """A minimal TopK transcoder and its train step, inline so that the bench depends on nothing else."""

    def __init__(self, d_latent: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W_enc = (torch.randn(D, d_latent, generator=g) / D**0.5).requires_grad_()
        self.b_enc = torch.zeros(d_latent, requires_grad=True)
        self.W_dec = (torch.randn(d_latent, D, generator=g) / d_latent**0.5).requires_grad_()
        self.b_dec = torch.zeros(D, requires_grad=True)
        self.opt = torch.optim.Adam([self.W_enc, self.b_enc, self.W_dec, self.b_dec], lr=1e-4)
        self.x, self.y = torch.randn(BATCH, D, generator=g), torch.randn(BATCH, D, generator=g)

    def encode(self, x_BD):
        vals_BK, idx_BK = (x_BD @ self.W_enc + self.b_enc).topk(K, dim=1)
        return idx_BK, F.relu(vals_BK)

    def step(self):
        idx_BK, vals_BK = self.encode(self.x)
        y_hat = F.embedding_bag(idx_BK, self.W_dec, per_sample_weights=vals_BK, mode="sum") + self.b_dec
        (y_hat - self.y).pow(2).sum(-1).mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class HeapCollector:
    """The baseline: Python dicts and per-latent heaps, fed every nonzero (token, latent) activation."""

    def __init__(self, n_latents: int, k: int):
        self.k = k
        self.heaps = [[] for _ in range(n_latents)]  # min-heaps of (value, -gid, ctx, step): worst on top
        self.held = [{} for _ in range(n_latents)]  # ctx -> its heap entry

    def update(self, b_list, l_list, v_list, gid_list, step):
        best = {}
        for b, l, v in zip(b_list, l_list, v_list):
            gid = gid_list[b]
            key, old = (l, gid // CTX_LEN), best.get((l, gid // CTX_LEN))
            if old is None or (v, -gid) > old:
                best[key] = (v, -gid)
        for (l, c), (v, ngid) in best.items():
            heap, held, entry = self.heaps[l], self.held[l], (v, ngid, c, step)
            if c in held:
                if entry[:2] > held[c][:2]:
                    held[c] = entry
                    heap[:] = list(held.values())
                    heapq.heapify(heap)
            elif len(heap) < self.k:
                heapq.heappush(heap, entry)
                held[c] = entry
            elif entry[:2] > heap[0][:2]:
                del held[heapq.heapreplace(heap, entry)[2]]
                held[c] = entry

    def top(self, latent: int):
        return sorted(((v, -ngid) for v, ngid, _, _ in self.heaps[latent]), key=lambda e: (-e[0], e[1]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def share_of_train_step(d_latent: int, n_updates: int):
    """Collector updates interleaved with train steps, so that both see the same machine load."""
    model, g = TopKStep(d_latent), torch.Generator().manual_seed(1)
    model.step()
    with torch.no_grad():  # a few encoded batches, cycled under fresh global ids: the encoder is not timed
        pool = [model.encode(torch.randn(BATCH, D, generator=g)) for _ in range(4)]
    for n_intervals in (5, 0):
        c = TopKCollector(d_latent, CollectorConfig(ctx_len=CTX_LEN, n_intervals=n_intervals))
        step_times, times = [], []
        for i, gid_B in enumerate(stream_gids(n_updates)):
            if i % 6 == 0:
                step_times.append(timed(model.step))
            times.append(timed(lambda: c.update(pool[i % len(pool)], gid_B, i)))
        step_s, late = statistics.median(step_times), statistics.median(times[n_updates // 2:])
        print(f"d_latent {d_latent}, n_intervals={n_intervals}: train step {step_s * 1e3:.0f} ms "
              f"({BATCH / step_s:,.0f} tok/s); collector update: first {times[0] * 1e3:.0f} ms = "
              f"{times[0] / step_s:.1%} of a step, median of the last {n_updates - n_updates // 2} "
              f"{late * 1e3:.1f} ms = {late / step_s:.2%}, mean of all {statistics.mean(times) / step_s:.2%}")


def speedup_over_heap(label: str, make_acts, n_latents: int, n_updates: int, heap_batches: int):
    """Per-token time of the heap on the first batches against the collector's, the two interleaved."""
    gids, heap, c = stream_gids(n_updates), HeapCollector(n_latents, 16), TopKCollector(n_latents, CollectorConfig(ctx_len=CTX_LEN))

    def heap_update(acts, gid_B, i):  # converting to Python lists is part of the heap's cost
        if isinstance(acts, tuple):
            idx, vals = acts
            b = torch.arange(BATCH).repeat_interleave(idx.shape[1]).tolist()
            heap.update(b, idx.flatten().tolist(), vals.flatten().tolist(), gid_B.tolist(), i)
        else:
            nz = acts.nonzero()
            heap.update(nz[:, 0].tolist(), nz[:, 1].tolist(), acts[nz[:, 0], nz[:, 1]].tolist(), gid_B.tolist(), i)
    heap_s, coll_times, pool = 0.0, [], [make_acts(i) for i in range(max(heap_batches, 4))]
    for i, gid_B in enumerate(gids):  # the collector cycles a few batches under fresh global ids
        acts = pool[i % len(pool)]
        if i < heap_batches:
            heap_s += timed(lambda: heap_update(acts, gid_B, i))
        coll_times.append(timed(lambda: c.update(acts, gid_B, i)))
        if i == heap_batches - 1:  # same data seen: the two must agree
            held = c.top_gids >= 0
            agree = all(heap.top(l) == list(zip(c.top_vals[l][held[l]].tolist(), c.top_gids[l][held[l]].tolist()))
                        for l in range(n_latents))
    heap_tok, cold_tok = heap_s / (heap_batches * BATCH), sum(coll_times[:heap_batches]) / (heap_batches * BATCH)
    mean_tok, late_tok = statistics.mean(coll_times) / BATCH, statistics.median(coll_times[n_updates // 2:]) / BATCH
    print(f"{label}: heapq {heap_tok * 1e6:.1f} us/token on the first {heap_batches} batches (results agree: "
          f"{agree}); collector on the same batches {cold_tok * 1e6:.2f} us/token = {heap_tok / cold_tok:.0f}x faster, "
          f"mean of {n_updates} updates {mean_tok * 1e6:.2f} = {heap_tok / mean_tok:.0f}x, median of the last "
          f"{n_updates - n_updates // 2} {late_tok * 1e6:.2f} = {heap_tok / late_tok:.0f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--heap-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"batch {BATCH} tokens, ctx_len {CTX_LEN}")
    for d_latent in (9216, 16384):
        share_of_train_step(d_latent, args.updates)
    model = TopKStep(9216)

    @torch.no_grad()
    def topk(i):
        return model.encode(torch.randn(BATCH, D, generator=torch.Generator().manual_seed(100 + i)))
    # P(z > 1.914) = 256 / 9216 for a standard normal z: about 256 active latents per token
    dense = lambda i: F.relu(torch.randn(BATCH, 9216, generator=torch.Generator().manual_seed(200 + i)) - 1.914)  # noqa: E731
    speedup_over_heap("L0 32 (TopK pairs)", topk, 9216, args.updates, args.heap_batches)
    speedup_over_heap(f"L0 {(dense(0) > 0).sum(1).float().mean():.0f} (dense acts)", dense, 9216, args.updates,
                      args.heap_batches)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (numbers from a busy machine are not comparable)")


if __name__ == "__main__":
    main()
