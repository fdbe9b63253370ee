"""The collector on the real embedded model and corpus: exact against brute force, windows hold the token."""
import heapq

import torch

from kit.collect.collector import TopKCollector

from kit.config import CollectorConfig
from kit.presets import SMOKE
from kit.lm.store import TranscoderActivationsStore
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig


def test_collector_equals_brute_force_on_real_text(embedded):
    model, tok = embedded
    store = TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, config=SMOKE.store.__class__(
        ctx_len=64, batch_size=512, refill_contexts=24, shuffle_contexts=48, holdout_contexts=4, autocast=False))
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=96, activation="topk", k=6)).eval()
    cfg = CollectorConfig(ctx_len=64, k=5, threshold=0.05, n_intervals=0)
    collector = TopKCollector(96, cfg)
    seen = []
    with torch.no_grad():
        for step in range(5):  # several shuffled batches: contexts are split across them
            batch = store.get_batch_with_tokens()
            out = tc(batch.x_in)
            collector.update((out.top_idx, out.top_vals), batch.global_ids, step)
            seen.append((out.acts, batch.global_ids))
    acts = torch.cat([a for a, _ in seen])
    gids = torch.cat([g for _, g in seen])
    # Brute force: for each latent, the best token of each context, then the k largest (ties: lower gid).
    best = {}
    for row in range(len(gids)):
        ctx, gid = int(gids[row]) // 64, int(gids[row])
        for lat in acts[row].nonzero()[:, 0].tolist():
            v = float(acts[row, lat])
            if v <= cfg.threshold:
                continue
            key = (lat, ctx)
            if key not in best or (v, -gid) > (best[key][0], -best[key][1]):
                best[key] = (v, gid)
    for lat in range(96):
        cands = [(v, -g) for (l, _), (v, g) in best.items() if l == lat]
        want = heapq.nlargest(cfg.k, cands)
        held = collector.top_gids[lat] >= 0
        got = list(zip(collector.top_vals[lat][held].tolist(), (-collector.top_gids[lat][held]).tolist()))
        assert got == [(float(torch.tensor(v, dtype=torch.float32)), g) for v, g in want], f"latent {lat}"
    df = collector.samples()
    for r in df.head(30).itertuples():  # decoded windows contain the token at the recorded position
        assert store.decode_context(r.global_id, 0, 0) in store.decode_context(r.global_id, 8, 3)
        assert store.context(r.global_id, 10_000, 0)[-1] == store.context_at(r.context_index).token_ids[r.position]
