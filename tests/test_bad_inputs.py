"""Every bad input gets one clear line before anything loads, and a damaged checkpoint never ends a run.

Quick tier: no language model loads here (the `no_model` fixture fails a test that tries to load one).
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.cli import main
from kit.config import ConfigError, TrainConfig, TranscoderConfig
from kit.model.transcoder import Transcoder
from kit.presets import get_preset
from kit.train import checkpoint
from kit.train.trainer import Trainer
from synthetic import PlantedDictionaryStore

SMOKE = get_preset("smoke")


@pytest.fixture
def no_model(monkeypatch):
    """Offline, and loading a model fails the test: every bad input must be refused before one loads."""
    import huggingface_hub.constants
    import transformers
    from kit.lm import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(models, "embedded_folder", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fake_checkpoint(run, step: int, damaged: bool = False, finished: bool = False) -> None:
    """A run folder of the smoke preset whose `latest` checkpoint is at `step` (its files are not a real state)."""
    folder = run / "checkpoints" / f"step_{step:07d}"
    folder.mkdir(parents=True)
    (folder / "tensors.safetensors").write_bytes(b"tensors")
    (folder / "state.json").write_text("{}")
    sums = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("tensors.safetensors", "state.json")}
    (folder / "checksums.json").write_text(json.dumps(sums))
    if damaged:
        (folder / "tensors.safetensors").write_bytes(b"tens")
    (run / "checkpoints" / "latest").write_text(folder.name)
    (run / "config.json").write_text(json.dumps(SMOKE.to_dict()))
    if finished:
        (run / "metrics.json").write_text("{}")


SETUPS = {
    "empty_jsonl": lambda tmp: (tmp / "empty.jsonl").touch(),
    "empty_folder": lambda tmp: (tmp / "run").mkdir(),
    "file": lambda tmp: (tmp / "run").write_text("not a folder"),
    "model_folder": lambda tmp: (tmp / "model").mkdir(),
    "checkpoint": lambda tmp: fake_checkpoint(tmp / "run", 40),
    "damaged": lambda tmp: fake_checkpoint(tmp / "run", 40, damaged=True),
    "finished": lambda tmp: fake_checkpoint(tmp / "run", 160, finished=True),
}
CASES = [  # (--set values or other options, setup, the exact line the user sees: {run} and {tmp} filled in)
    (["--set", "train.steps=abc"], None, "error: override 'train.steps=abc': train.steps must be int, got 'abc'"),
    (["--set", "train.steps="], None, "error: override 'train.steps=': train.steps must be int, got ''"),
    (["--set", "store.batch_size=abc"], None,
     "error: override 'store.batch_size=abc': store.batch_size must be int, got 'abc'"),
    (["--set", "latents=5"], None,
     "error: override 'latents=5': latents is a section; set one of its fields, e.g. latents.dtype=..."),
    (["--set", "train.lr=abc"], None, "error: override 'train.lr=abc': train.lr must be float, got 'abc'"),
    (["--set", "store.autocast=maybe"], None,
     "error: override 'store.autocast=maybe': store.autocast must be bool, got 'maybe'"),
    (["--set", "source={tmp}/empty.jsonl"], "empty_jsonl",
     "error: the source {tmp}/empty.jsonl is empty: it holds no records"),
    (["--set", "source=embeded"], None,
     "error: source 'embeded' is neither a local path nor a reachable hub dataset (offline: HF_HUB_OFFLINE is set "
     "and it is not in the local hub cache); did you mean 'embedded'?"),
    (["--set", "source=./corpus.jsonl"], None, "error: source './corpus.jsonl' looks like a local path, but nothing "
                                              "is there"),
    (["--set", "model=/no/such/dir"], None,
     "error: model '/no/such/dir' looks like a local path, but there is no folder there"),
    (["--set", "model={tmp}/model"], "model_folder",
     "error: model folder '{tmp}/model' holds no config.json: pass a folder written by save_pretrained"),
    (["--set", "model=kit-tests/no-such-model"], None,  # a RuntimeError (ModelLoadError) from load_model
     "error: could not reach or find 'kit-tests/no-such-model' ("),
    (["--resume"], None, "error: no checkpoint in {run}; drop --resume to start a new run"),
    (["--resume"], "empty_folder", "error: no checkpoint in {run}; drop --resume to start a new run"),
    ([], "file", "error: cannot use {run} as a run folder: {run} is a file; choose another --out"),
    ([], "checkpoint",
     "error: {run} already holds a run with checkpoints: pass --resume to continue it, or choose another --out"),
    (["--resume", "--set", "train.steps=100"], "checkpoint",
     "error: cannot resume {run}: its config.json differs (train.steps: checkpoint 160, now 100); use the original "
     "preset and options"),
    (["--resume"], "damaged",
     "error: every checkpoint in {run}/checkpoints is damaged (step_0000040: tensors.safetensors does not match its "
     "checksum: cut short or altered since it was saved); move checkpoints/ away to start again"),
    (["--resume"], "finished",
     "error: {run} holds a finished run (step 160 of 160): --resume has nothing to do and changed nothing; to "
     "rebuild its report: python -m kit report {run}"),
    (["--device", "gpu"], None, "error: device 'gpu' is not a torch device: "),
]


@pytest.mark.parametrize("options, setup, expected", CASES, ids=[" ".join(c[0]) + f" [{c[1]}]" for c in CASES])
def test_bad_input_gets_one_line_before_anything_loads(tmp_path, no_model, options, setup, expected):
    if setup:
        SETUPS[setup](tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    run = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--out", str(run), *(o.format(tmp=tmp_path) for o in options)]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    line, expected = exit_.value.code, expected.format(run=run, tmp=tmp_path)
    assert isinstance(line, str) and "\n" not in line  # a str code: Python prints it and exits with status 1
    assert line.startswith(expected) if expected.endswith((" (", ": ")) else line == expected
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "the refusal left files behind"


def test_the_user_sees_exactly_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kit", "train", "--out", str(tmp_path / "run"), "--set",
                           "train.steps=abc"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1 and not done.stdout
    assert done.stderr == "error: override 'train.steps=abc': train.steps must be int, got 'abc'\n"
    assert not (tmp_path / "run").exists()


def test_store_refuses_a_wrong_type_before_loading(no_model):
    from kit.lm.store import TranscoderActivationsStore
    with pytest.raises(ConfigError, match=r"^StoreConfig.batch_size must be int, got 'big'$"):
        TranscoderActivationsStore("embedded", "embedded", 8, batch_size="big")


def test_an_unreachable_hub_is_asked_once(monkeypatch):
    """Without network a mistyped source fails at once, not after five retries of `datasets`."""
    import datasets
    import huggingface_hub
    import huggingface_hub.constants
    from kit.corpus.records import open_source
    calls = []

    def unreachable(self, name, **kwargs):
        calls.append(name)
        raise ConnectionError("[Errno -2] Name or service not known")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was tried"))
    with pytest.raises(ValueError, match=r"^source 'embeded' is neither a local path nor a reachable hub dataset "
                                         r"\(no network: ConnectionError: .*\); did you mean 'embedded'\?$"):
        open_source("embeded")
    assert calls == ["embeded"]


@pytest.mark.parametrize("error", [TypeError("a bug"), RuntimeError("a bug"), KeyError("a bug")])
def test_a_bug_keeps_its_traceback(monkeypatch, error):
    import kit.cli

    def broken(args):
        raise error
    monkeypatch.setattr(kit.cli, "_dispatch", broken)
    with pytest.raises(type(error)):
        main(["train"])


# ---- damaged checkpoints: the synthetic store, no language model ------------------------------------------------
def make(run_dir, steps=24):
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=64, d_out=64, d_latent=256, activation="topk", k=4))
    cfg = TrainConfig(steps=steps, lr=3e-3, checkpoint_every=8, log_every=4, dead_window=2048)
    return Trainer(tc, PlantedDictionaryStore(), cfg, run_dir=run_dir, config_dict={"cfg": cfg.__dict__})


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def control_char(path):
    path.write_text(path.read_text().replace('"step"', '"st\x01ep"', 1))


@pytest.mark.parametrize("damage, file", [(truncate, "tensors.safetensors"), (control_char, "state.json")])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, damage, file):
    full = make(tmp_path / "full")
    full.fit(progress=False)
    make(tmp_path / "cut").fit(progress=False)  # checkpoints at 16 and 24 are kept
    newest = tmp_path / "cut" / "checkpoints" / "step_0000024"
    damage(newest / file)
    resumed = make(tmp_path / "cut")
    assert resumed.resume() and resumed.step == 16
    assert capsys.readouterr().err == (f"checkpoint {newest} is damaged ({file} does not match its checksum: cut "
                                       "short or altered since it was saved); resuming from step_0000016 instead\n")
    resumed.fit(progress=False)
    for name, value in full.tc.state_dict().items():
        assert torch.equal(value, resumed.tc.state_dict()[name]), f"{name} differs after the fallback"
    assert checkpoint.damage(newest) is None, "the damaged checkpoint was not rewritten"


def test_every_checkpoint_damaged_is_named(tmp_path):
    make(tmp_path).fit(progress=False)
    for folder in (tmp_path / "checkpoints").glob("step_*"):
        truncate(folder / "tensors.safetensors")
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"no intact checkpoint in .*step_0000024 is damaged "
                                                           r"\(tensors.safetensors does not match .*step_0000016"):
        make(tmp_path).resume()


def test_pruning_never_deletes_the_last_intact_checkpoint(tmp_path):
    trainer = make(tmp_path, steps=32)
    trainer.fit(stop_at=16, progress=False)
    truncate(tmp_path / "checkpoints" / "step_0000016" / "tensors.safetensors")  # damaged after it was written
    trainer.fit(stop_at=24, progress=False)  # 16 is damaged, so 8 is kept as the second intact checkpoint
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == \
        ["step_0000008", "step_0000016", "step_0000024"]
    trainer.fit(progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_0000024", "step_0000032"]
    assert checkpoint.KEEP >= 2


def test_a_checkpoint_from_before_checksums_still_resumes(tmp_path):
    make(tmp_path).fit(progress=False)
    (tmp_path / "checkpoints" / "step_0000024" / "checksums.json").unlink()
    resumed = make(tmp_path)
    assert resumed.resume() and resumed.step == 24


def test_report_names_missing_run_files_before_loading_anything(tmp_path, no_model):
    """A report of an unfinished run names what is missing and how to make it, and loads no model."""
    run = tmp_path / "run"
    fake_checkpoint(run, 40)
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(run)])
    assert exit_.value.code == (f"error: {run} lacks metrics.json, samples.parquet, latents.csv, history.csv, "
                                f"transcoder/model.safetensors: a run writes them when training finishes; finish it "
                                f"with `python -m kit train --out {run} --resume` and its original options")


def test_report_title_names_the_model_and_source():
    from types import SimpleNamespace

    from kit.report.data import report_title
    run = SimpleNamespace(config={"name": "smoke", "model": "/models/mine", "layer": 3, "source": "my.jsonl"},
                          folder=Path("runs/x"))
    assert report_title(run) == "smoke: /models/mine, layer 3, on my.jsonl"
