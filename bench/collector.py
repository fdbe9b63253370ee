"""Time the TopKCollector against what it rides on and against what it replaces, on one shuffled token stream.

1. Share: one collector update as a share of one TopK transcoder train step (an inline TopK encoder whose
   backward reads only the chosen latents, embedding_bag decoder, MSE, Adam: as fast as the kit's own step), at
   d_in = d_out = 576, k = 32, 4096 tokens, ctx_len 128, for d_latent 9216 and 16384. Goal <= 5%. The first
   updates cost most (empty buffers take everything); later ones drop most tokens before any sorting.
2. Speedup over a per-latent heapq collector (a dict of the best token per (latent, context) in the batch, then
   per-latent heaps that keep one entry per context) at L0 32 (TopK pairs) and L0 ~256 (dense ReLU-like acts).
   The heap is timed on fewer batches and compared per token. Goals >= 10x and >= 50x.

The stream mimics the store: 256 contexts' tokens shuffled together per refill, cut into batches; every update
gets a fresh batch. Timings share the 2-core machine with whatever else runs: the load average is printed.

    python bench/collector.py [--updates 30] [--heap-batches 2] [--threads N]
"""
import argparse
import gc
import heapq
import os
import statistics
import time

import torch
import torch.nn.functional as F

from kit.collect.collector import TopKCollector

from kit.config import CollectorConfig

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


class _TopKEncode(torch.autograd.Function):
    """x @ W_enc + b_enc, top k per row, ReLU. The backward reads only the k chosen latents per row (a sparse
    product, as in kit/topk_encoder.py and EleutherAI's sparsify), which keeps the step as fast as the kit's."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DL, b_enc_L, k: int):
        vals_BK, idx_BK = torch.addmm(b_enc_L, x_BD, W_enc_DL).topk(k, dim=1, sorted=False)
        ctx.save_for_backward(x_BD, idx_BK, vals_BK > 0)
        ctx.mark_non_differentiable(idx_BK)
        ctx.n_latents = W_enc_DL.shape[1]
        return vals_BK.clamp_min(0), idx_BK

    @staticmethod
    def backward(ctx, g_vals_BK, g_idx):
        x_BD, idx_BK, alive_BK = ctx.saved_tensors
        B, K = idx_BK.shape
        g_N, l_N = (g_vals_BK * alive_BK).flatten(), idx_BK.flatten()
        rows_N = torch.arange(B).repeat_interleave(K)
        g_LB = torch.sparse_coo_tensor(torch.stack([l_N, rows_N]), g_N, (ctx.n_latents, B), check_invariants=False)
        grad_b = torch.zeros(ctx.n_latents).index_add_(0, l_N, g_N)
        return None, torch.sparse.mm(g_LB, x_BD).T, grad_b, None


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
        return _TopKEncode.apply(x_BD, self.W_enc, self.b_enc, K)[::-1]  # (top_idx_BK, top_vals_BK)

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
    """Seconds `fn()` takes, with the garbage collector off (as timeit does): the heap baseline's millions of
    Python objects would otherwise make whoever runs next pay for collecting them."""
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def share_of_train_step(d_latent: int, n_updates: int):
    """Collector updates (with and without interval samples) interleaved with train steps, so that all three
    see the same machine load."""
    model, g = TopKStep(d_latent), torch.Generator().manual_seed(1)
    model.step()
    collectors = {n: TopKCollector(d_latent, CollectorConfig(ctx_len=CTX_LEN, n_intervals=n)) for n in (5, 0)}
    step_times, times = [], {n: [] for n in collectors}
    for i, gid_B in enumerate(stream_gids(n_updates)):
        if i % 5 == 0:
            step_times.append(timed(model.step))
        with torch.no_grad():  # a fresh batch every update (a stream that repeats itself is too easy)
            acts = model.encode(torch.randn(BATCH, D, generator=g))
        for n, c in collectors.items():
            times[n].append(timed(lambda: c.update(acts, gid_B, i)))
    step_s = statistics.median(step_times)
    print(f"d_latent {d_latent}: train step {step_s * 1e3:.0f} ms ({BATCH / step_s:,.0f} tok/s)")
    for n, t in times.items():
        late = statistics.median(t[n_updates // 2:])
        print(f"  collector, n_intervals={n}: first update {t[0] * 1e3:.0f} ms = {t[0] / step_s:.1%} of a step; "
              f"median of the last {n_updates - n_updates // 2} {late * 1e3:.1f} ms = {late / step_s:.2%}; "
              f"mean of all {statistics.mean(t) / step_s:.2%}")


def speedup_over_heap(label: str, make_acts, n_latents: int, n_updates: int, heap_batches: int):
    """Per-token time of the heap on the first batches against the collector's, the two interleaved."""
    gids, heap = stream_gids(n_updates), HeapCollector(n_latents, 16)
    c = TopKCollector(n_latents, CollectorConfig(ctx_len=CTX_LEN))

    def heap_update(acts, gid_B, i):  # converting to Python lists is part of the heap's cost
        if isinstance(acts, tuple):
            idx, vals = acts
            b = torch.arange(BATCH).repeat_interleave(idx.shape[1]).tolist()
            heap.update(b, idx.flatten().tolist(), vals.flatten().tolist(), gid_B.tolist(), i)
        else:
            nz = acts.nonzero()
            heap.update(nz[:, 0].tolist(), nz[:, 1].tolist(), acts[nz[:, 0], nz[:, 1]].tolist(), gid_B.tolist(), i)
    heap_s, coll_times = 0.0, []
    for i, gid_B in enumerate(gids):
        acts = make_acts(i)
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
    def topk(i):  # a fresh batch every update (a stream that repeats itself is too easy)
        return model.encode(torch.randn(BATCH, D, generator=torch.Generator().manual_seed(100 + i)))

    def dense(i):  # P(z > 1.914) = 256 / 9216 for a standard normal z: about 256 active latents per token
        return F.relu(torch.randn(BATCH, 9216, generator=torch.Generator().manual_seed(200 + i)) - 1.914)
    speedup_over_heap("L0 32 (TopK pairs)", topk, 9216, args.updates, args.heap_batches)
    speedup_over_heap(f"L0 {(dense(0) > 0).sum(1).float().mean():.0f} (dense acts)", dense, 9216, args.updates,
                      args.heap_batches)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (numbers from a busy machine are not comparable)")


if __name__ == "__main__":
    main()
