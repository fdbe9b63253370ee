"""TopKCollector against brute force and a per-latent heapq reference, on synthetic shuffled streams."""
import heapq
import math
import os
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load, save

from kit.collect.collector import TopKCollector
from kit.collect.merge import merge_distributed
from kit.collect.samples import topk_retention, window_slices

from kit.config import CollectorConfig
from kit.collect.intervals import _M32, _mul32, context_key, desc_value

N_CTX, CTX_LEN, L = 40, 16, 24


def make_stream(seed=0, n_batches=7, density=0.3, contexts=range(N_CTX), quantize=None):
    """[(acts_BL, gids_B, step)]: every non-BOS token of `contexts` once, shuffled and cut into uneven batches."""
    g = torch.Generator().manual_seed(seed)
    gids = torch.tensor([c * CTX_LEN + p for c in contexts for p in range(1, CTX_LEN)])
    gids = gids[torch.randperm(len(gids), generator=g)]
    acts = torch.rand(len(gids), L, generator=g) * (torch.rand(len(gids), L, generator=g) < density)
    if quantize:  # few distinct values: exact ties everywhere
        acts = torch.ceil(acts * quantize) / quantize
    cuts = sorted(torch.randperm(len(gids) - 1, generator=g)[:n_batches - 1].add(1).tolist())
    bounds = [0, *cuts, len(gids)]
    return [(acts[a:b], gids[a:b], 10 * i + 3) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def sparse(acts_BL, k=6):
    vals, idx = acts_BL.topk(k, dim=1)
    return idx, vals


def densify(idx_BK, vals_BK):
    return torch.zeros(len(idx_BK), L).scatter(1, idx_BK, vals_BK)


def brute_force(stream, k, threshold=0.0):
    """{latent: [(value, gid, step)] best first}: top-k over (latent, context) maxima of the whole stream."""
    best = {}
    for acts, gids, step in stream:
        for row, gid in zip(acts.tolist(), gids.tolist()):
            for l, v in enumerate(row):
                if v > threshold:
                    key, cand = (l, gid // CTX_LEN), (-v, gid, step)
                    best[key] = min(best.get(key, cand), cand)
    per_latent = {l: sorted(c for (ll, _), c in best.items() if ll == l)[:k] for l in range(L)}
    return {l: [(-nv, gid, step) for nv, gid, step in c] for l, c in per_latent.items()}


def heap_reference(stream, k, threshold=0.0):
    """Streaming per-latent heap: each batch's per-context maxima pushed into a dict of held contexts, cut to k."""
    held = [{} for _ in range(L)]  # context -> (value, -gid, gid, step)
    for acts, gids, step in stream:
        for row, gid in zip(acts.tolist(), gids.tolist()):
            for l, v in enumerate(row):
                if v > threshold:
                    c, cand = gid // CTX_LEN, (v, -gid, gid, step)
                    held[l][c] = max(held[l].get(c, cand), cand)
        for l in range(L):
            held[l] = {c: e for c, e in heapq.nlargest(k, held[l].items(), key=lambda ce: ce[1][:2])}
    return {l: [(v, gid, step) for v, _, gid, step in sorted(h.values(), reverse=True)] for l, h in enumerate(held)}


def held_top(c: TopKCollector):
    out = {}
    for l in range(c.n_latents):
        n = int((c.top_gids[l] >= 0).sum())
        out[l] = list(zip(c.top_vals[l, :n].tolist(), c.top_gids[l, :n].tolist(), c.top_steps[l, :n].tolist()))
    return out


def collect(stream, sparse_k=None, **cfg):
    c = TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN, **cfg))
    for acts, gids, step in stream:
        c.update(sparse(acts, sparse_k) if sparse_k else acts, gids, step)
    return c


@pytest.mark.parametrize("n_intervals", [0, 5])  # interval samples widen the token filter: test without too
@pytest.mark.parametrize("threshold", [0.0, 0.5])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_topk_equals_brute_force_and_heap(path, threshold, n_intervals):
    stream = make_stream(seed=1)
    if path == "sparse":  # the reference sees exactly what the sparse pair holds
        ref_stream = [(densify(*sparse(a)), g, s) for a, g, s in stream]
        c = collect(stream, sparse_k=6, k=5, threshold=threshold, n_intervals=n_intervals)
    else:
        ref_stream, c = stream, collect(stream, k=5, threshold=threshold, n_intervals=n_intervals)
    got = held_top(c)
    assert got == brute_force(ref_stream, 5, threshold), "collector top-k differs from brute force"
    assert got == heap_reference(ref_stream, 5, threshold), "collector top-k differs from the heapq reference"
    assert sum(map(len, got.values())) > 0.8 * L * 5, "test stream too thin to mean much"


@pytest.mark.parametrize("n_intervals", [0, 5])
def test_ties_go_to_lower_global_id_whatever_the_batching(n_intervals):
    stream = make_stream(seed=2, quantize=2)  # values in {0, 0.5, 1}: heavy exact ties
    ref = brute_force(stream, 4)
    results = []
    for order_seed in range(3):  # same tokens, different batch order: values and ids must not change
        perm = torch.randperm(len(stream), generator=torch.Generator().manual_seed(order_seed)).tolist()
        got = held_top(collect([stream[i] for i in perm], k=4, n_intervals=n_intervals))
        results.append({l: [(v, g) for v, g, _ in e] for l, e in got.items()})
    assert results[0] == {l: [(v, g) for v, g, _ in e] for l, e in ref.items()}
    assert results[0] == results[1] == results[2], "tie-breaking depends on batch order"


def test_context_counts_once_per_latent_across_batches():
    # one context's tokens spread over 15 batches, its values rising: one entry, at the max, from the last batch
    gids = torch.arange(1, CTX_LEN) + 7 * CTX_LEN
    c = TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN, k=4))
    for i, gid in enumerate(gids.tolist()):
        c.update(torch.full((1, L), 0.1 * (i + 1)), torch.tensor([gid]), step=i)
    assert (c.top_gids[:, 0] == gids[-1]).all() and (c.top_gids[:, 1:] == -1).all()
    assert (c.top_steps[:, 0] == CTX_LEN - 2).all()
    c = collect(make_stream(seed=12, n_batches=12, density=0.6), k=8)
    ctx = c.top_gids // CTX_LEN
    for l in range(L):  # and on a shuffled stream, no context twice in a latent's top-k
        held = ctx[l][c.top_gids[l] >= 0].tolist()
        assert len(held) == len(set(held))


@pytest.mark.parametrize("n_intervals", [5, 0])
def test_state_dict_round_trip_continues_identically(n_intervals):
    stream = make_stream(seed=3, n_batches=8)
    full = collect(stream, k=5, n_intervals=n_intervals)
    first = collect(stream[:4], k=5, n_intervals=n_intervals)
    resumed = TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN, k=5, n_intervals=n_intervals))
    resumed.load_state_dict(load(save(first.state_dict())))  # through safetensors bytes, as a checkpoint does
    for acts, gids, step in stream[4:]:
        resumed.update(acts, gids, step)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_merge_equals_collecting_the_union():
    # two shards that share contexts 10..29 (each holds some tokens of them), as if the split were arbitrary
    stream = make_stream(seed=4, n_batches=10)
    in_a = [(g // CTX_LEN < 10) | ((g // CTX_LEN < 30) & (g % 2 == 1)) for _, g, _ in stream]
    a_stream = [(acts[m], gids[m], step) for (acts, gids, step), m in zip(stream, in_a)]
    b_stream = [(acts[~m], gids[~m], step) for (acts, gids, step), m in zip(stream, in_a)]
    union = collect(stream, k=5)
    merged = collect(a_stream, k=5).merge(collect(b_stream, k=5))
    for name in ("top_vals", "top_gids", "top_steps"):
        assert torch.equal(getattr(merged, name), getattr(union, name)), name
    check_interval_invariants(merged)


def check_interval_invariants(c: TopKCollector):
    cfg, s = c.config, c.samples()
    ints, max_L = s[s.kind == "interval"], c.top_vals[:, 0].numpy()
    assert len(ints), "no interval samples to check"
    lo = ints.interval / cfg.n_intervals * max_L[ints.latent]
    hi = (ints.interval + 1) / cfg.n_intervals * max_L[ints.latent]
    assert ((ints.activation >= lo * (1 - 1e-6)) & (ints.activation <= hi * (1 + 1e-6))).all(), "sample outside its bin"
    assert (ints.activation > cfg.threshold).all()
    assert ints.groupby(["latent", "interval"]).size().max() <= cfg.per_interval
    assert not ints.duplicated(["latent", "context_index"]).any(), "a context twice in one latent's interval samples"


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_interval_samples_stay_in_their_bins(path):
    stream = make_stream(seed=6, n_batches=9)
    c = collect(stream, sparse_k=6 if path == "sparse" else None, k=3, n_intervals=4, per_interval=3, threshold=0.05)
    check_interval_invariants(c)


def reservoir_reference(stream, n, per, seed):
    """Streaming reference of the documented rule: each batch, raise each latent's running max and re-bin its
    samples; then offer each context's batch maximum unless the latent already holds that context; bin by
    value / max and keep per (latent, bin) the `per` highest context keys (ties: lower global id)."""
    held = [{} for _ in range(L)]  # context -> (key, gid, value, step)
    max_L = np.full(L, -np.inf, dtype=np.float32)

    def bin_of(v, l):
        return min(int(np.floor(v / max_L[l] * np.float32(n))), n - 1)

    def cut(l):
        by_bin = {}
        for c, (key, gid, v, _) in held[l].items():
            by_bin.setdefault(bin_of(v, l), []).append((-key, gid, c))
        keep = {c for entries in by_bin.values() for _, _, c in sorted(entries)[:per]}
        held[l] = {c: e for c, e in held[l].items() if c in keep}

    for acts, gids, step in stream:
        best = {}
        for row, gid in zip(acts.numpy(), gids.tolist()):
            for l in np.nonzero(row > 0)[0].tolist():
                c, cand = gid // CTX_LEN, (-row[l], gid)
                best[(l, c)] = min(best.get((l, c), cand), cand)
        for (l, c), (nv, gid) in best.items():
            max_L[l] = max(max_L[l], -nv)
        for l in range(L):
            cut(l)
        for (l, c), (nv, gid) in best.items():
            if c not in held[l]:
                held[l][c] = (int(context_key(torch.tensor([c]), seed)), gid, -nv, step)
        for l in range(L):
            cut(l)
    return {(l, bin_of(e[2], l), e[1], float(e[2]), e[3]) for l in range(L) for e in held[l].values()}


RESERVOIR_CASES = {  # seed, per_interval, n_intervals, n_batches, density, contexts, power (a longer tail)
    "rising max": (3, 1, 4, 40, 0.3, 60, 4),
    "two per bin": (4, 2, 5, 20, 0.5, 40, 2),
    "planted max": (4, 2, 5, 20, 0.5, 40, 2),
    "bounded below": (3, 1, 5, 40, 0.3, 60, 4),  # like TopK: no value under half the max, low bins stay empty
}


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("case", RESERVOIR_CASES)
def test_interval_reservoir_equals_reference(case, path):
    seed, per, n, n_batches, density, n_ctx, power = RESERVOIR_CASES[case]
    stream = make_stream(seed=seed, n_batches=n_batches, density=density, contexts=range(n_ctx))
    stream = [(a ** power, g, s) for a, g, s in stream]  # upper bins fill slowly, the max keeps rising
    if case == "bounded below":
        stream = [(torch.where(a > 0, 0.5 + a, 0.0), g, s) for a, g, s in stream]
    if case == "planted max":  # every latent's max in the first batch: bins never move
        first = stream[0][0]
        first[torch.arange(L) % len(first), torch.arange(L)] = 1.0
    if path == "sparse":
        stream = [(densify(*sparse(a, 12)), g, s) for a, g, s in stream]
    # k=1 keeps the top-k's own token filter from letting through what the interval filter must
    c = collect(stream, sparse_k=12 if path == "sparse" else None, k=1, n_intervals=n, per_interval=per, seed=11)
    ints = c.samples().query("kind == 'interval'")
    got = {(int(r.latent), int(r.interval), int(r.global_id), float(r.activation), int(r.step))
           for r in ints.itertuples()}
    assert len(got) > L * per, "too few interval samples to mean much"
    assert got == reservoir_reference(stream, n, per, seed=11)


def test_rising_max_rebins_at_once():
    c = TopKCollector(1, CollectorConfig(ctx_len=CTX_LEN, k=1, n_intervals=4, per_interval=1))
    c.update(torch.tensor([[0.2], [1.0]]), torch.tensor([CTX_LEN + 1, 2 * CTX_LEN + 1]), step=0)
    # context 1 is already sampled, so only the max moves: context 2 drops from the top bin to bin 1
    c.update(torch.tensor([[4.0]]), torch.tensor([CTX_LEN + 2]), step=1)
    s = c.samples()
    assert s[s.kind == "interval"].set_index("context_index")["interval"].to_dict() == {1: 0, 2: 1}
    check_interval_invariants(c)


def _gloo_worker(rank, path, streams):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{path}.init", rank=rank, world_size=2)
    c = collect(streams[rank], k=5)
    merge_distributed(c)
    torch.save(c.state_dict(), f"{path}.rank{rank}")
    dist.destroy_process_group()


def test_merge_distributed_with_two_gloo_ranks():
    streams = [make_stream(seed=8, contexts=range(0, 20)), make_stream(seed=9, contexts=range(20, N_CTX))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dist")
        mp.spawn(_gloo_worker, args=(path, streams), nprocs=2)
        states = [torch.load(f"{path}.rank{r}") for r in range(2)]
    expected = collect(streams[0], k=5).merge(collect(streams[1], k=5)).state_dict()
    union = collect(streams[0] + streams[1], k=5)
    for state in states:
        assert all(torch.equal(state[n], expected[n]) for n in expected)
        assert torch.equal(state["top_gids"], union.top_gids) and torch.equal(state["top_vals"], union.top_vals)
    assert merge_distributed(union) is union  # not initialized here: a no-op


def test_samples_frame_summary_and_windows():
    c = collect(make_stream(seed=10), k=5)
    s = c.samples()
    assert list(s.columns) == ["latent", "rank", "activation", "global_id", "context_index", "position", "step",
                               "kind", "interval"]
    top = s[s.kind == "top"]
    assert (top.interval == -1).all() and (top.position >= 1).all()
    assert (top.global_id == top.context_index * CTX_LEN + top.position).all()
    assert top.groupby("latent")["activation"].apply(lambda a: a.is_monotonic_decreasing).all()
    summ = c.summary()
    assert summ["total_samples"] == len(top) and summ["latents_with_samples"] == top.latent.nunique()
    assert math.isclose(summ["avg_samples_per_latent"], len(top) / top.latent.nunique())
    assert f"{summ['total_samples']:,} top samples" in str(c)
    ctx, start, stop = window_slices(torch.tensor([17, 31, 40]), CTX_LEN, before=4, after=2)
    assert ctx.tolist() == [1, 1, 2] and start.tolist() == [1, 11, 4] and stop.tolist() == [4, 16, 11]


def test_topk_retention_counts_contexts_still_in_the_final_top():
    train = pd.DataFrame({"latent": [0, 0, 0, 1, 1, 2], "context_index": [1, 2, 3, 4, 5, 6], "kind": "top"})
    final = pd.DataFrame({"latent": [0, 0, 1, 1, 2], "context_index": [2, 3, 9, 8, 1], "kind": "top"})
    interval_row = pd.DataFrame({"latent": [2], "context_index": [6], "kind": ["interval"]})
    per_latent, total = topk_retention(train, pd.concat([final, interval_row]))
    assert per_latent.to_dict() == {0: 2 / 3, 1: 0.0, 2: 0.0} and total == 2 / 6
    with pytest.raises(ValueError, match="doc_id"):
        topk_retention(train, final, key="doc_id")


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="threshold"):
        CollectorConfig(ctx_len=16, threshold=-1.0)
    with pytest.raises(ValueError, match="ctx_len"):
        CollectorConfig(ctx_len=1)
    c = TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN))
    acts, gids = torch.rand(3, L), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="n_latents"):
        c.update(torch.rand(3, L + 1), gids, 0)
    with pytest.raises(ValueError, match="BOS"):
        c.update(acts, torch.tensor([1, 2, CTX_LEN]), 0)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        c.update(acts, gids[:2], 0)
    with pytest.raises(ValueError, match="outside"):
        c.update((torch.tensor([[L]] * 3), torch.ones(3, 1)), gids, 0)
    with pytest.raises(ValueError, match="step"):
        c.update(acts, gids, -1)
    with pytest.raises(ValueError, match="interval_"):
        c.load_state_dict(TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN, n_intervals=0)).state_dict())
    with pytest.raises(ValueError, match="ctx_len"):
        c.load_state_dict(TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN + 1)).state_dict())


def test_ranking_helpers():
    h = torch.randint(0, 2**32, (1000,))
    assert [int(x) for x in _mul32(h, 0x85EBCA6B)] == [(x * 0x85EBCA6B) & _M32 for x in h.tolist()]
    v = torch.tensor([3.0, 0.0, -2.5, float("inf"), 1e-30, -float("inf"), 2.0])
    assert torch.equal(torch.sort(desc_value(v), stable=True).indices, torch.sort(-v, stable=True).indices)
    keys = context_key(torch.arange(20000), seed=0)
    assert keys.min() >= 0 and keys.max() < 2**32 and len(keys.unique()) > 19990
    assert abs(keys.float().mean().item() / 2**32 - 0.5) < 0.01  # uniform enough to sample by


def test_bf16_acts_collect_like_their_float32_values():
    stream = [(a.bfloat16(), g, s) for a, g, s in make_stream(seed=13)]
    low = collect(stream, k=4, threshold=0.25).state_dict()
    high = collect([(a.float(), g, s) for a, g, s in stream], k=4, threshold=0.25).state_dict()
    assert all(torch.equal(low[n], high[n]) for n in low)


@pytest.mark.gpu
def test_cuda_collects_like_cpu():
    stream = make_stream(seed=14)
    cpu = collect(stream, sparse_k=6, k=4).state_dict()
    gpu = TopKCollector(L, CollectorConfig(ctx_len=CTX_LEN, k=4), device="cuda")
    for acts, gids, step in stream:
        gpu.update(tuple(t.cuda() for t in sparse(acts)), gids, step)
    assert all(torch.equal(cpu[n], t.cpu()) for n, t in gpu.state_dict().items())
