"""The end of a run on two gloo ranks equals the same work on one: the sharded final pass, the held-out pass
and the samples built from the contexts each rank owns, and the consumed-context set is the union over ranks."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from kit.collect.merge import merge_distributed

from kit.config import CollectorConfig
from kit.distributed import gather_objects
from kit.finish import sort_samples
from kit.collect.final_pass import InputCache, final_pass, samples_frame
from kit.lm.store import TranscoderActivationsStore
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig
from test_distributed import spawn

pytestmark = pytest.mark.slow  # two spawned gloo ranks

STORE = dict(ctx_len=32, batch_size=96, refill_contexts=6, shuffle_contexts=64, holdout_contexts=6,
             holdout_share=0.3, lm_batch=4, domain_field="dom")
COLLECT = CollectorConfig(ctx_len=32, k=3, n_intervals=2, window_before=6, window_after=3)
N_TRAIN = 12  # training contexts 0..11 of the stream: six on each of two ranks


def _texts():
    from conftest import STDLIB
    import importlib
    import inspect
    import datasets
    return datasets.Dataset.from_list([{"text": inspect.getsource(importlib.import_module(m)), "dom": d}
                                       for d, ms in STDLIB.items() for m in ms])


def _pools(store):
    """The same pools on any world size: training contexts 0..N_TRAIN-1 (every other token of the first one,
    as a partly consumed context) and the held-out set, each rank taking the contexts it owns."""
    h = STORE["holdout_contexts"]
    train = {h + j: None for j in range(N_TRAIN) if store.owns(h + j)}
    if h in train:
        train[h] = store.context_at(h).trained_mask() & (torch.arange(32) % 2 == 0).numpy()
    return {"final": train, "heldout": {i: None for i in store.holdout_indices if store.owns(i)}}


def _finish(rank: int, run_dir: Path, world: int):
    from kit.lm.models import load_model
    model, tok = load_model("embedded")
    store = TranscoderActivationsStore(model, _texts(), 8, tokenizer=tok, shard=(rank, world), **STORE)
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=576, d_out=576, d_latent=64, activation="topk", k=4)).eval()
    cache = InputCache(store)
    phases = {p: merge_distributed(final_pass(tc, store, c, COLLECT, 7, False, cache)) for p, c in
              _pools(store).items()}
    frames = gather_objects(samples_frame(phases, tc, store, False, cache))
    gids = set()
    for _ in range(3):
        gids |= set(store.get_batch_with_tokens().global_ids.tolist())
    consumed = gather_objects(sorted(store.consumed()))
    handed = gather_objects(sorted({g // 32 for g in gids}))
    if rank == 0:
        sort_samples(pd.concat(frames, ignore_index=True)).to_parquet(run_dir / f"samples-{world}.parquet")
        (run_dir / f"seen-{world}.json").write_text(json.dumps({"consumed": consumed, "handed": handed}))


def _two_ranks(rank: int, run_dir: Path):
    assert dist.get_world_size() == 2
    _finish(rank, run_dir, 2)


def test_final_pass_and_samples_are_identical_on_one_rank_and_on_two(tmp_path):
    """Top samples (values, provenance, windows, re-scored activations) are identical. Interval samples are a
    streaming reservoir whose bins follow the running max, so their draw depends on the order candidates arrive
    in: on two ranks they are the same kind of sample, not the same rows."""
    _finish(0, tmp_path, 1)
    spawn(tmp_path, _two_ranks, timeout=240)
    one, two = (pd.read_parquet(tmp_path / f"samples-{w}.parquet") for w in (1, 2))
    assert set(one.phase) == {"final", "heldout"} and len(one) > 0
    top = [df[df.kind == "top"].reset_index(drop=True) for df in (one, two)]
    pd.testing.assert_frame_equal(*top)
    key = ["phase", "latent", "interval", "global_id"]
    rows = [set(map(tuple, df[df.kind == "interval"][key].to_numpy().tolist())) for df in (one, two)]
    assert len(rows[0] & rows[1]) >= 0.9 * len(rows[0] | rows[1])
    seen = json.loads((tmp_path / "seen-2.json").read_text())
    union = set(seen["consumed"][0]) | set(seen["consumed"][1])
    assert not set(seen["consumed"][0]) & set(seen["consumed"][1]), "each rank consumes its own contexts"
    assert union == set(seen["handed"][0]) | set(seen["handed"][1]), "the seen set is the union over ranks"
