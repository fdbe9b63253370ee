"""Sweeps: several transcoders from one store, each point a complete run folder equal to its own separate run."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from kit.config import ConfigError
from kit.run import train_run
from kit.sweep import parse_sweep, run_sweep, sweep_points

from test_run import TINY

GRID = {"latents.k": ["4", "8"]}


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory, embedded):
    model, tok = embedded
    out = tmp_path_factory.mktemp("sweep")
    table = run_sweep(TINY, GRID, out, progress=False, report=False, model=model, tokenizer=tok)
    return out, table


def _weights(run_dir):
    return load_file(str(run_dir / "transcoder" / "model.safetensors"))


def test_each_point_equals_its_separate_run(full_sweep, embedded, tmp_path):
    """Fed the same batches, a sweep point trains exactly the transcoder a separate run trains, and its final
    pass (one LM read for all points) collects exactly the same samples."""
    out, table = full_sweep
    model, tok = embedded
    alone = tmp_path / "alone"
    metrics = train_run(TINY.override(["latents.k=8"]), alone, progress=False, report=False, model=model,
                        tokenizer=tok)
    point = out / "latents.k=8"
    for name, value in _weights(alone).items():
        assert torch.equal(value, _weights(point)[name]), f"{name} differs between the sweep and a separate run"
    swept = pd.read_parquet(point / "samples.parquet")
    separate = pd.read_parquet(alone / "samples.parquet")
    pd.testing.assert_frame_equal(swept, separate)
    assert json.loads((point / "metrics.json").read_text())["fvu"] == pytest.approx(metrics["fvu"], rel=1e-6)
    assert list(table["point"]) == ["latents.k=4", "latents.k=8"] and set(table["status"]) == {"finished"}
    for col in ("latents.k", "l0", "fvu", "ce_loss_recovered", "dead_frac", "train_seconds", "step_seconds"):
        assert col in table, col
    assert table["l0"].iloc[0] <= 4 + 1e-6 < table["l0"].iloc[1] <= 8 + 1e-6  # each point has its own k
    assert pd.read_csv(out / "sweep.csv")["point"].tolist() == table["point"].tolist()


def test_killed_sweep_resumes_exactly(full_sweep, embedded, tmp_path):
    """Killed between two points' checkpoints (one point a save ahead), the sweep resumes every point from the
    step they share and ends bit-identical to the uninterrupted sweep."""
    out, _ = full_sweep
    model, tok = embedded
    cut = tmp_path / "cut"
    assert run_sweep(TINY, GRID, cut, progress=False, stop_at=3, report=False, model=model, tokenizer=tok) is None
    (cut / "latents.k=8/checkpoints/latest").write_text("step_0000002")  # as if killed while saving step 3
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep(TINY, GRID, cut, progress=False, report=False, model=model, tokenizer=tok)
    run_sweep(TINY, GRID, cut, resume=True, progress=False, report=False, model=model, tokenizer=tok)
    for point in ("latents.k=4", "latents.k=8"):
        for name, value in _weights(out / point).items():
            assert torch.equal(value, _weights(cut / point)[name]), f"{point}: {name} differs after resume"
        pd.testing.assert_frame_equal(pd.read_parquet(out / point / "samples.parquet"),
                                      pd.read_parquet(cut / point / "samples.parquet"))
        steps = pd.read_csv(cut / point / "history.csv")["step"]
        assert steps.is_unique, f"{point}: history repeats steps after the resume"
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(TINY, {"latents.k": ["4", "16"]}, cut, resume=True, progress=False, report=False, model=model,
                  tokenizer=tok)


def test_a_diverging_point_stops_alone(embedded, tmp_path):
    model, tok = embedded
    table = run_sweep(TINY, {"train.lr": ["0.003", "1e20"]}, tmp_path, progress=False, report=False, model=model,
                      tokenizer=tok)
    ok, bad = table.set_index("point").loc[["train.lr=0.003", "train.lr=1e20"]].to_dict("records")
    assert ok["status"] == "finished" and (tmp_path / "train.lr=0.003/metrics.json").exists()
    assert bad["status"].startswith("stopped: loss is") and not (tmp_path / "train.lr=1e20/metrics.json").exists()
    assert "not finite" in bad["status"] or "nan" in bad["status"] or "inf" in bad["status"]


def test_sweep_arguments_are_checked_before_loading():
    assert parse_sweep(["latents.k=16, 32", "train.lr=1e-3"]) == {"latents.k": ["16", "32"], "train.lr": ["1e-3"]}
    for bad, says in ((["store.batch_size=1,2"], "shares"), (["layer=1,2"], "shares"), (["train.steps=1,2"], "shares"),
                      (["latents.k="], "expected"), (["latents.k=1,1"], "repeats"),
                      (["latents.k=1", "latents.k=2"], "twice")):
        with pytest.raises(ConfigError, match=says):
            parse_sweep(bad)
    with pytest.raises(ConfigError, match="latents.k"):
        sweep_points(TINY, {"latents.k": ["8", "many"]}, "/tmp/unused")
    points = sweep_points(TINY, {"latents.k": ["4", "8"], "train.lr": ["1e-3", "3e-3"]}, "/tmp/grid")
    assert [p.name for p in points] == ["latents.k=4,train.lr=1e-3", "latents.k=4,train.lr=3e-3",
                                        "latents.k=8,train.lr=1e-3", "latents.k=8,train.lr=3e-3"]
    assert points[3].config.latents.k == 8 and points[3].config.train.lr == 3e-3
    run = subprocess.run([sys.executable, "-m", "kit", "train", "--sweep", "store.ctx_len=64,128", "--out",
                          "/tmp/never"], capture_output=True, text=True)
    assert run.returncode != 0 and run.stderr.count("\n") == 1 and "store.ctx_len" in run.stderr


def test_torchrun_sweep_equals_torchrun_run(tmp_path, embedded):
    """Under torchrun (two gloo ranks) a sweep point trains exactly what a torchrun run of that point trains."""
    from test_run import TINY_ARGS
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = [a for s in TINY_ARGS for a in ("--set", s)]

    def torchrun(port: int, out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "kit", "train", "--preset", "smoke", "--out", str(out), "--no-report", *sets, *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun(29533, tmp_path / "sweep", "--sweep", "latents.k=4,8")
    torchrun(29534, tmp_path / "alone", "--set", "latents.k=8")
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert list(table["status"]) == ["finished", "finished"]
    assert (table["tokens_seen"] == 2 * 4 * TINY.store.batch_size).all(), "tokens_seen counts both ranks"
    for name, value in _weights(tmp_path / "alone").items():
        assert torch.equal(value, _weights(tmp_path / "sweep" / "latents.k=8")[name]), name
