"""Two gloo ranks on the CPU, each on its own synthetic data: the ranks' training state stays bit-identical,
a distributed resume equals the uninterrupted run, and a planted desync stops every rank at the next checkpoint.

Each rank seeds its weights and its data differently, so without the step-0 broadcast and the all-reduced b_dec,
scales and BatchTopK threshold the ranks drift apart (b_dec alone differed by 88% of its norm before those).
"""
import csv
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kit.distributed import DesyncError
from synthetic import PlantedDictionaryStore
from kit.train.trainer import Trainer
from kit.config import TrainConfig
from kit.model.transcoder import Transcoder
from kit.config import TranscoderConfig

pytestmark = pytest.mark.slow  # two spawned gloo ranks

WORLD, BATCH, STEPS = 2, 64, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, target, run_dir: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(target(rank, Path(run_dir), *args), Path(run_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(run_dir: Path, target, *args, timeout: float = 60) -> list:
    """Run `target(rank, run_dir, *args)` on WORLD gloo ranks; their results, or a failure if a rank hangs."""
    ctx = mp.spawn(_entry, args=(_free_port(), target, str(run_dir), args), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(deadline - time.monotonic(), 0.01)):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"a rank was still running after {timeout} s")
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def make(run_dir: Path, activation: str, rank: int) -> Trainer:
    torch.manual_seed(100 + rank)  # each rank draws other weights: training must start from rank 0's
    tc = Transcoder(TranscoderConfig(d_in=24, d_out=24, d_latent=128, activation=activation, k=4))
    # dead_window of two steps' tokens (both ranks), so AuxK runs too
    cfg = TrainConfig(steps=STEPS, lr=3e-3, checkpoint_every=2, log_every=2, dead_window=2 * BATCH * WORLD, k_aux=16)
    store = PlantedDictionaryStore(d_in=24, d_out=24, n_atoms=64, k=3, batch_size=BATCH, seed=rank)
    return Trainer(tc, store, cfg, run_dir=run_dir, config_dict={"cfg": cfg.__dict__, "tc": tc.cfg.to_dict()})


def state(trainer: Trainer) -> dict:
    opt = {f"optimizer.{i}.{k}": v for i, s in trainer.optimizer.state_dict()["state"].items() for k, v in s.items()}
    return {**{f"transcoder.{k}": v for k, v in trainer.tc.state_dict().items()}, **opt,
            "since_fired": trainer.since_fired, "scales": trainer.scales,
            "tokens_seen": torch.tensor(trainer.tokens_seen), "step": torch.tensor(trainer.step)}


def _train_full_and_resumed(rank: int, run_dir: Path, activation: str) -> dict:
    full = make(run_dir / "full", activation, rank)
    full.fit(progress=False)
    make(run_dir / "cut", activation, rank).fit(stop_at=3, progress=False)  # "killed" after step 3
    if rank == 0:  # as if killed before step 3 was saved (one writer: the other rank reads it next)
        (run_dir / "cut/checkpoints/latest").write_text("step_0000002")
    dist.barrier()
    resumed = make(run_dir / "cut", activation, rank)
    assert resumed.resume() and resumed.step == 2
    resumed.fit(progress=False)
    return {"full": state(full), "resumed": state(resumed)}


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    differ = [k for k in a if not (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]))]
    assert not differ, f"{what}: {differ} differ"


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_ranks_stay_identical_and_resume_equals_uninterrupted(tmp_path, activation):
    """Regression: before the step-0 broadcast and the all-reduced b_dec, the ranks' weights differed."""
    results = spawn(tmp_path, _train_full_and_resumed, activation)
    for run in ("full", "resumed"):
        assert_same(results[0][run], results[1][run], f"{run} run: rank 0 vs rank 1")
    assert_same(results[0]["full"], results[0]["resumed"], "uninterrupted vs resumed")
    if activation == "batchtopk":
        assert results[0]["full"]["transcoder.threshold"] > 0
    ranks = json.loads((tmp_path / f"full/checkpoints/step_{STEPS:07d}/ranks.json").read_text())
    assert ranks["identical"] and ranks["differ"] == [] and [r["rank"] for r in ranks["ranks"]] == [0, 1]
    assert ranks["ranks"][0]["hashes"] == ranks["ranks"][1]["hashes"]
    hashed = set(ranks["ranks"][0]["hashes"])
    assert {"transcoder.b_dec", "optimizer.W_dec.exp_avg", "since_fired", "scheduler", "tokens_seen"} <= hashed
    assert int(results[0]["full"]["tokens_seen"]) == STEPS * BATCH * WORLD
    rows = list(csv.DictReader(open(tmp_path / "cut/history.csv")))
    assert [int(r["tokens"]) for r in rows] == [s * BATCH * WORLD for s in (2, 4, 6)]


def _collectives(rank: int, run_dir: Path) -> dict:
    y = torch.randn(5 + rank, 8, generator=torch.Generator().manual_seed(rank))  # unequal row counts
    tc = Transcoder(TranscoderConfig(d_in=8, d_out=8, d_latent=32, activation="batchtopk", k=2))
    tc.init_b_dec(y)
    acts = tc(torch.randn(4, 8, generator=torch.Generator().manual_seed(10 + rank))).acts
    return {"y": y, "b_dec": tc.b_dec.detach(), "threshold": tc.threshold.clone(), "low": acts[acts > 0].min().detach()}


def test_b_dec_and_threshold_use_every_ranks_batch(tmp_path):
    """Regression: each rank used to set b_dec and the BatchTopK threshold from its own batch alone."""
    results = spawn(tmp_path, _collectives)
    y = torch.cat([r["y"] for r in results])
    for r in results:
        torch.testing.assert_close(r["b_dec"], y.mean(0))
        assert r["threshold"] == min(float(q["low"]) for q in results)


def _train_with_planted_desync(rank: int, run_dir: Path) -> dict:
    trainer = make(run_dir, "topk", rank)
    trainer.fit(stop_at=2, progress=False)  # checkpoint 2: the ranks agree
    if rank == 1:
        with torch.no_grad():
            trainer.tc.b_dec[0] += 1e-3  # what a rank-local running statistic would do
    try:
        trainer.fit(progress=False)
    except DesyncError as e:
        return {"error": str(e), "step": trainer.step}
    return {"error": None, "step": trainer.step}


def test_planted_desync_stops_every_rank_and_names_the_tensor(tmp_path):
    results = spawn(tmp_path, _train_with_planted_desync)
    for r in results:
        assert r["error"] is not None and r["step"] == 4, r
        assert "transcoder.b_dec" in r["error"] and "W_enc" not in r["error"], r["error"]
    ranks = json.loads((tmp_path / "checkpoints/step_0000004/ranks.json").read_text())
    assert not ranks["identical"] and ranks["differ"] == ["transcoder.b_dec"]
    assert (tmp_path / "checkpoints/latest").read_text() == "step_0000002", "a desynced checkpoint became latest"
