"""The activation cache: written from the real embedded model, read back bit-identical to the live store.

One cache of a tiny config is written once per module (`written`); the tests read it, copy it, tamper with copies
and compare against live stores and a live run.
"""
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kit.cache_cmd import token_count
from kit.config import RunConfig, StoreConfig
from kit.lm.cache import FREE_FIELDS, LAYOUT_FIELDS, MANIFEST, VALUE_FIELDS, read_manifest, shard_file
from kit.lm.cache_writer import write_cache
from kit.lm.cached_store import CachedActivationsStore, open_cached_store
from kit.lm.store import TranscoderActivationsStore
from kit.presets import SMOKE

SETS = ["latents.d_latent=256", "latents.k=8", "train.steps=6", "train.checkpoint_every=3", "store.batch_size=128",
        "store.refill_contexts=4", "store.shuffle_contexts=32", "store.holdout_contexts=8", "store.autocast=false",
        "eval_contexts=4", "collector.k=4"]
TINY = SMOKE.override(SETS)
TOKENS = 1024  # 8 batches of 128


@pytest.fixture(scope="module")
def written(embedded, tmp_path_factory) -> Path:
    model, tok = embedded
    out = tmp_path_factory.mktemp("cache") / "tiny"
    write_cache(TINY, out, TOKENS, model=model, tokenizer=tok, progress=False)
    return out


@pytest.fixture(scope="module")
def live(embedded) -> TranscoderActivationsStore:
    model, tok = embedded
    return TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, config=TINY.store)


def cached(path, embedded, **kwargs) -> CachedActivationsStore:
    return CachedActivationsStore(path, TINY.store, tokenizer=embedded[1], **kwargs)


def assert_same_batch(a, b) -> None:
    for name, x, y in zip(a._fields, a, b):
        assert x.dtype == y.dtype and torch.equal(x, y), f"{name} differs"


def test_cached_batches_are_the_live_stores_across_a_resume(written, live, embedded):
    first = cached(written, embedded)
    live.load_state_dict(first.state_dict())  # the start of the stream, whatever ran before
    for _ in range(3):
        assert_same_batch(live.get_batch_with_tokens(), first.get_batch_with_tokens())
    state = first.state_dict()
    assert state == live.state_dict(), "a cached store's position is a live store's position"
    resumed = cached(written, embedded)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint's state.json gives it back
    for _ in range(5):  # crosses chunks and refills
        assert_same_batch(live.get_batch_with_tokens(), resumed.get_batch_with_tokens())
    assert resumed.consumed().keys() == live.consumed().keys()
    assert all(torch.equal(torch.as_tensor(resumed.consumed()[k]), torch.as_tensor(v))
               for k, v in live.consumed().items() if v is not None)
    assert not resumed.model_loaded and not first.model_loaded, "reading the cache must never load the model"


def test_provenance_methods_equal_the_live_stores(written, live, embedded):
    store = cached(written, embedded)
    gids = store.get_batch_with_tokens().global_ids[:16].tolist()
    for gid in gids:
        assert store.context(gid) == live.context(gid)
        assert store.decode_context(gid, 5, 3) == live.decode_context(gid, 5, 3)
    idx = sorted({g // TINY.store.ctx_len for g in gids}) + store.holdout_indices[:3]
    for a, b in zip(store.tokens_for_contexts(idx), live.tokens_for_contexts(idx)):
        assert torch.equal(a, b)
    for a, b in zip(store.token_provenance(idx), live.token_provenance(idx)):
        assert (a == b).all()
    assert store.holdout_indices == live.holdout_indices and store.train_contexts(20) == live.train_contexts(20)
    assert store.domain_names[:len(live.domain_names)] == live.domain_names[:len(store.domain_names)]
    assert (store.d_in, store.d_out, store.device) == (live.d_in, live.d_out, live.device)
    assert store.hooks == live.hooks and store.source_name == live.source_name


def test_final_pass_activations_come_from_the_shards(written, live, embedded):
    """Cached training contexts are read from their shards (no model), equal to the live model's on every trained
    token and zero on BOS; a held-out context in the same call runs the model and equals the live store's."""
    store = cached(written, embedded)
    live.load_state_dict(store.state_dict())
    for _ in range(TOKENS // TINY.store.batch_size):
        store.get_batch_with_tokens()
    train = sorted(store.consumed())[::3]
    assert len(train) >= 8
    x, y, mask = store.activations_for_contexts(train)
    assert not store.model_loaded, "the final pass over cached contexts loaded the model"
    lx, ly, lmask = live.activations_for_contexts(train)
    assert torch.equal(mask, lmask) and (~mask).any() and mask.any()
    assert torch.equal(x[mask], lx[mask]) and torch.equal(y[mask], ly[mask])
    assert not x[~mask].any() and not y[~mask].any()
    held = store.holdout_indices[1]
    mx = store.activations_for_contexts([train[0], held, train[-1]])[0]
    assert store.model_loaded
    assert torch.equal(mx[0], x[0]) and torch.equal(mx[2], x[-1])
    assert torch.equal(mx[1], live.activations_for_contexts([held])[0][0]), "held out: the model, run as the live store"


def test_bounded_memory_whatever_the_cache_size(written, embedded):
    """Resident: at most mix_refills refills, and the chunk being handed out, cut from those refills only (the
    first chunk is the largest, about (mix_refills + 1) / 2 refills); nothing grows with the number of shards."""
    store, mix = cached(written, embedded), TINY.store.mix_refills
    row_bytes = (store.d_in + store.d_out) * 4
    refill_bytes = max(e["rows"] for e in store.manifest["shards"]) * row_bytes
    read = set()
    for _ in range(TOKENS // TINY.store.batch_size):
        store.get_batch_with_tokens()
        read |= set(store._acts)
        assert len(store._acts) <= mix
        resident_rows = sum(len(x) for x, _ in store._acts.values())
        assert len(store._buffer[0]) <= resident_rows <= mix * refill_bytes / row_bytes
        assert store.resident_bytes() == (resident_rows + len(store._buffer[0])) * row_bytes + store._buffer[2].nbytes
        assert store.resident_bytes() <= 2 * mix * refill_bytes * 1.02
    assert read == set(range(len(store.manifest["shards"]))), "every shard was read, never all at once"
    with pytest.raises(ValueError, match="write a cache with more --tokens"):
        for _ in range(4):
            store.get_batch_with_tokens()


def test_storage_dtype_is_cast_to_the_stores(tmp_path, written, live, embedded):
    model, tok = embedded
    write_cache(TINY, tmp_path, 256, dtype="bfloat16", model=model, tokenizer=tok, progress=False)
    half, full = cached(tmp_path, embedded), cached(written, embedded)
    for _ in range(2):
        a, b = half.get_batch_with_tokens(), full.get_batch_with_tokens()
        assert a.x_in.dtype == torch.float32 and torch.equal(a.x_in, b.x_in.bfloat16().float())
        assert torch.equal(a.y_out, b.y_out.bfloat16().float()) and torch.equal(a.global_ids, b.global_ids)
    shards = read_manifest(tmp_path)["shards"]
    ratio = shards[0]["bytes"] / read_manifest(written)["shards"][0]["bytes"]
    assert ratio == pytest.approx((2 * 576 * 2 + 64) / (2 * 576 * 4 + 64), abs=0.01)


def test_interrupted_write_resumes_to_the_same_bytes(tmp_path, written, embedded, capsys):
    model, tok = embedded
    assert write_cache(TINY, tmp_path, TOKENS, model=model, tokenizer=tok, progress=False, stop_after=2) is None
    with pytest.raises(ValueError, match="was not finished writing: rerun the same `python -m kit cache`"):
        CachedActivationsStore(tmp_path)
    with pytest.raises(ValueError, match="was not finished writing"):
        open_cached_store(dataclasses.replace(TINY, cache=str(tmp_path)))
    (tmp_path / f".{shard_file(0, 2)}.x1y2.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves it
    capsys.readouterr()
    write_cache(TINY, tmp_path, TOKENS, model=model, tokenizer=tok, progress=False)
    shards = len(read_manifest(written)["shards"])
    assert f"{shards - 2} shards to write" in capsys.readouterr().out
    names = sorted(p.name for p in written.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (written / name).read_bytes(), f"{name} differs"


def test_other_parameters_into_the_same_folder_are_refused(written, tmp_path, embedded):
    model, tok = embedded
    with pytest.raises(ValueError, match=r"other parameters \(tokens_requested: there 1024, now 2048\)"):
        write_cache(TINY, written, 2 * TOKENS, model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="dtype: there 'float32', now 'float16'"):
        write_cache(TINY, written, TOKENS, dtype="float16", model=model, tokenizer=tok)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no manifest.json"):
        write_cache(TINY, tmp_path, TOKENS, model=model, tokenizer=tok)
    manifest = write_cache(TINY, written, TOKENS, model=model, tokenizer=tok)  # the same again: nothing to do
    assert manifest == read_manifest(written)


def tampered(written: Path, tmp_path: Path, **fields) -> Path:
    out = tmp_path / "tampered"
    shutil.copytree(written, out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, **fields}))
    return out


@pytest.mark.parametrize("fields, overrides, named", [
    ({"model": "HuggingFaceTB/SmolLM2-135M"}, [], "model: cache 'HuggingFaceTB/SmolLM2-135M', run 'embedded'"),
    ({"revision": "sha256:0123"}, [], "revision: cache 'sha256:0123', run 'sha256:"),
    ({}, ["layer=9"], "layer: cache 8, run 9"),
    ({}, ["store.ctx_len=32", "store.min_tokens=4"], "store.ctx_len: cache 64, run 32"),
    ({}, ["store.seed=3"], "store.seed: cache 0, run 3"),
    ({}, ["model_dtype=bfloat16"], "model_dtype: cache 'float32', run 'bfloat16'"),
])
def test_a_cache_of_another_run_is_refused_by_field(written, tmp_path, embedded, fields, overrides, named):
    path = tampered(written, tmp_path, **fields) if fields else written
    config = TINY.override([*overrides, f"cache={path}"])
    with pytest.raises(ValueError, match="does not match this run") as err:
        open_cached_store(config, tokenizer=embedded[1])
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_short_cache_or_another_world_size_is_refused(written, embedded):
    with pytest.raises(ValueError, match=r"needs train.steps x store.batch_size = 20 x 128 = 2,560 tokens per rank"):
        open_cached_store(TINY.override(["train.steps=20", f"cache={written}"]), tokenizer=embedded[1])
    with pytest.raises(ValueError, match=r"written by 1 rank\(s\) and this run has 2"):
        CachedActivationsStore(written, shard=(1, 2))
    with pytest.raises(ValueError, match="store.mix_refills: cache 4, run 2"):
        CachedActivationsStore(written, dataclasses.replace(TINY.store, mix_refills=2))


def test_a_changed_text_source_is_refused(written, tmp_path, embedded):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    out = tampered(written, tmp_path)
    tensors = load_file(out / shard_file(0, 0))
    with safe_open(out / shard_file(0, 0), framework="pt") as f:
        meta = f.metadata()
    tensors["layout"][0, 2] += 1  # one token id of the stored stream differs from the text now
    save_file(tensors, out / shard_file(0, 0), metadata=meta)  # the same size: only the layout check can tell
    store = cached(out, embedded)
    with pytest.raises(ValueError, match="the source changed since the cache was written"):
        store.get_batch_with_tokens()


def test_a_run_from_the_cache_writes_the_live_runs_samples(written, tmp_path, embedded, monkeypatch, capsys):
    from kit.run import train_run
    from kit.train.trainer import Trainer
    model, tok = embedded
    live_metrics = train_run(TINY, tmp_path / "live", progress=False, report=False, model=model, tokenizer=tok)
    fit, loaded_after_fit = Trainer.fit, []

    def spy(self, *args, **kwargs):
        fit(self, *args, **kwargs)
        loaded_after_fit.append(self.store.model_loaded)
    monkeypatch.setattr(Trainer, "fit", spy)
    capsys.readouterr()
    metrics = train_run(TINY.override([f"cache={written}"]), tmp_path / "cached", progress=False, report=False)
    assert loaded_after_fit == [False], "training from the cache loaded the model"
    assert capsys.readouterr().out.count("loading the language model embedded") == 1
    frames = [pd.read_parquet(tmp_path / run / "samples.parquet") for run in ("live", "cached")]
    assert len(frames[0]) > 100 and set(frames[0].phase) == {"training", "final", "heldout"}
    pd.testing.assert_frame_equal(frames[0], frames[1])
    drop = ["tokens_per_s"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "live/history.csv").drop(columns=drop),
                                  pd.read_csv(tmp_path / "cached/history.csv").drop(columns=drop))
    untimed = [{k: v for k, v in m.items() if not k.endswith("_seconds")} for m in (metrics, live_metrics)]
    assert untimed[0] == untimed[1] and "fvu" in untimed[0]


def test_cli_refuses_other_parameters_in_one_line(written):
    args = [sys.executable, "-m", "kit", "cache", "--preset", "smoke", *[a for s in SETS for a in ("--set", s)],
            "--out", str(written)]
    bad = subprocess.run([*args, "--tokens", "2k"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("error: ") and "tokens_requested: there 1024, now 2000" in bad.stderr


def test_every_store_field_is_layout_value_or_free():
    fields = [f.name for f in dataclasses.fields(StoreConfig)]
    assert sorted(LAYOUT_FIELDS + VALUE_FIELDS + FREE_FIELDS) == sorted(fields), \
        "a new StoreConfig field must be classified in kit.lm.cache"


def test_cache_setting_and_bad_input_before_anything_loads(tmp_path):
    config = SMOKE.override([f"cache={tmp_path}"])
    assert config.cache == str(tmp_path) and RunConfig.from_dict(config.to_dict()) == config
    assert SMOKE.override(["cache=none"]).cache is None
    with pytest.raises(FileNotFoundError, match="is not an activation cache: it holds no manifest.json"):
        CachedActivationsStore(tmp_path)
    with pytest.raises(ValueError, match="storage dtype 'int8'"):
        write_cache(SMOKE, tmp_path, 100, dtype="int8")
    with pytest.raises(ValueError, match="positive number of training tokens"):
        write_cache(SMOKE, tmp_path, 0)
    with pytest.raises(ValueError, match="drop --set cache"):
        write_cache(config, tmp_path, 100)
    assert [token_count(t) for t in ("1600000", "1_600_000", "1.6M", "2.3M", "200k", "2,048")] == \
        [1_600_000, 1_600_000, 1_600_000, 2_300_000, 200_000, 2048]
    for bad in ("0", "-5", "1.5", "lots", "2.0001k", "nan", "inf"):
        with pytest.raises(Exception, match="not a positive whole number"):
            token_count(bad)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, port: int, run_dir: str) -> None:
    import os

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(_write_and_train(rank, Path(run_dir)), Path(run_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _write_and_train(rank: int, run_dir: Path) -> dict:
    """Each rank writes its own stream's shards, checks them against its live store, then trains from the cache."""
    from kit.lm.models import load_model
    from kit.run import train_run
    model, tok = load_model("embedded")
    write_cache(TINY, run_dir / "cache", 2 * TINY.train.steps * TINY.store.batch_size, model=model, tokenizer=tok,
                progress=False)
    live = TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, config=TINY.store, shard=(rank, 2))
    store = CachedActivationsStore(run_dir / "cache", TINY.store, shard=(rank, 2), tokenizer=tok)
    same = all(torch.equal(a, b) for _ in range(3) for a, b in zip(live.get_batch_with_tokens(),
                                                                   store.get_batch_with_tokens()))
    del live, model
    train_run(TINY.override([f"cache={run_dir / 'cache'}"]), run_dir / "run", progress=False, report=False)
    return {"same": same}


@pytest.mark.slow
def test_two_gloo_ranks_write_their_own_shards_and_train_from_them(tmp_path):
    import torch.multiprocessing as mp
    ctx = mp.spawn(_rank_entry, args=(_free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 600
    while not ctx.join(timeout=max(deadline - time.monotonic(), 0.01)):  # False while a rank still runs
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank was still running after 600 s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["same"] for r in results), "a rank's cached batches differ from its live store's"
    manifest = read_manifest(tmp_path / "cache")
    assert manifest["world"] == 2 and {e["rank"] for e in manifest["shards"]} == {0, 1}
    assert [r["rank"] for r in manifest["ranks"]] == [0, 1]
    assert manifest["tokens_per_rank"] >= TINY.train.steps * TINY.store.batch_size
    h = TINY.store.holdout_contexts
    train = set(pd.read_parquet(tmp_path / "run/samples.parquet").query("phase == 'training'").context_index)
    assert {(i - h) % 2 for i in train} == {0, 1}, "the run trained on both ranks' shards"
    with pytest.raises(ValueError, match=r"written by 2 rank\(s\) and this run has 1"):
        CachedActivationsStore(tmp_path / "cache")
