"""The whole pipeline on the real embedded model and corpus, at a tiny size: resume, CLI, torchrun."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from kit.presets import SMOKE
from kit.run import prepare, train_run

TINY = SMOKE.override(["latents.d_latent=256", "latents.k=8", "train.steps=6", "train.checkpoint_every=2",
                       "store.batch_size=256", "store.refill_contexts=8", "store.shuffle_contexts=64",
                       "store.holdout_contexts=16", "eval_contexts=8", "collector.k=4"])


def test_killed_and_resumed_real_run_is_bit_identical(tmp_path, embedded):
    model, tok = embedded
    full = prepare(TINY, tmp_path / "full", model=model, tokenizer=tok)
    full.fit(progress=False)
    cut = prepare(TINY, tmp_path / "cut", model=model, tokenizer=tok)
    cut.fit(stop_at=3, progress=False)  # killed after step 3: checkpoints at 2 and 3
    (tmp_path / "cut/checkpoints/latest").write_text("step_0000002")  # as if killed before step 3 was saved
    with pytest.raises(FileExistsError, match="--resume"):
        prepare(TINY, tmp_path / "cut", model=model, tokenizer=tok)
    resumed = prepare(TINY, tmp_path / "cut", resume=True, model=model, tokenizer=tok)
    assert resumed.step == 2
    resumed.fit(progress=False)
    for name, value in full.tc.state_dict().items():
        assert torch.equal(value, resumed.tc.state_dict()[name]), f"{name} differs after resume"
    for name, value in full.collector.state_dict().items():
        assert torch.equal(value, resumed.collector.state_dict()[name]), f"collector {name} differs after resume"


def test_resume_with_another_preset_is_refused(tmp_path, embedded):
    model, tok = embedded
    prepare(TINY, tmp_path, model=model, tokenizer=tok).fit(progress=False)
    with pytest.raises(ValueError, match="latents.d_latent"):
        prepare(TINY.override(["latents.d_latent=128"]), tmp_path, resume=True, model=model, tokenizer=tok)


def test_run_folder_layout_and_samples(tmp_path, embedded):
    model, tok = embedded
    metrics = train_run(TINY, tmp_path, progress=False, model=model, tokenizer=tok)
    for name in ("config.json", "transcoder/config.json", "transcoder/model.safetensors", "history.csv",
                 "samples.parquet", "latents.csv", "metrics.json", "report.md", "report.html",
                 "interpretation/specialization.csv"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "metrics.json").read_text())["fvu"] == pytest.approx(metrics["fvu"])
    df = pd.read_parquet(tmp_path / "samples.parquet")
    assert set(df.phase) == {"training", "final", "heldout"} and set(df.kind) <= {"top", "interval"}
    held = set(df[df.phase == "heldout"].context_index)
    assert held and held <= set(range(TINY.store.holdout_contexts)), "the held-out phase reads held-out contexts"
    from kit.lm.store import TranscoderActivationsStore
    store = TranscoderActivationsStore(model, "embedded", 8, tokenizer=tok, config=TINY.store)
    for r in df.sample(20, random_state=0).itertuples():  # the window holds the collected token, re-scored
        ctx = store.context_at(r.context_index)
        seg = ctx.segment_at(r.position)
        assert r.context_ids[r.token_index] == ctx.token_ids[r.position] and r.doc_id == seg.doc_id
        assert r.domain == seg.domain and r.global_id == r.context_index * TINY.store.ctx_len + r.position
        assert r.doc_position == seg.doc_start + r.position - seg.start
        assert tok.decode([ctx.token_ids[r.position]]) == r.context_tokens[r.token_index]
        assert r.activation_final == pytest.approx(r.context_acts[r.token_index])
    final = df[(df.phase == "final") & (df.kind == "top")]
    assert (final.activation - final.activation_final).abs().max() < 1e-3, "final-pass values must re-score exactly"


def test_cli_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "kit", "train", "--help"], capture_output=True, text=True, check=True)
    for option in ("--preset", "--out", "--resume", "--set", "--device", "--no-report", "--show-config"):
        assert option in out.stdout
    bad = subprocess.run([sys.executable, "-m", "kit", "train", "--preset", "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "choose one of" in bad.stderr


def test_torchrun_two_gloo_ranks(tmp_path, embedded):
    """Two CPU processes: each reads its own shard, gradients are averaged, rank 0 writes the merged run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "kit", "train", "--preset", "smoke", "--out", str(tmp_path), "--no-report",
           *[a for s in TINY_ARGS for a in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    h = TINY.store.holdout_contexts
    train = set(pd.read_parquet(tmp_path / "samples.parquet").query("phase == 'training'").context_index)
    assert {(i - h) % 2 for i in train} == {0, 1}, "the merged collector must hold samples from both ranks"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tokens_seen"] == 2 * 4 * TINY.store.batch_size, "tokens_seen counts every rank"
    state = json.loads(next((tmp_path / "checkpoints").glob("step_*/state.json")).read_text())
    assert len(state["store"]) == 2, "the checkpoint must hold both ranks' stream positions"


TINY_ARGS = ["latents.d_latent=256", "latents.k=8", "train.steps=4", "train.checkpoint_every=2",
             "store.batch_size=256", "store.refill_contexts=8", "store.shuffle_contexts=64",
             "store.holdout_contexts=16", "eval_contexts=8", "collector.k=4"]


def test_topk_retention_is_one_when_the_weights_do_not_move(tmp_path, embedded):
    """The final pass ranks over exactly the tokens training consumed, so a frozen run keeps its top-k."""
    model, tok = embedded
    frozen = TINY.override(["train.lr=1e-12", "train.steps=5", "collector.n_intervals=0"])
    metrics = train_run(frozen, tmp_path, progress=False, report=False, model=model, tokenizer=tok)
    assert metrics["topk_retention"] >= 0.99, metrics["topk_retention"]
    latents = pd.read_csv(tmp_path / "latents.csv")
    assert "topk_retention" in latents and latents["topk_retention"].dropna().min() >= 0.5
