"""One training run end to end: model, store, transcoder, loop, metrics, final top-k pass, samples, report.

`python -m kit train` calls `train_run`; notebook 01 builds the same pieces cell by cell (`start_run`, the loop in
chunks, then `finish`), so both write the same run folder. `ensure_run` is the one-call version for scripts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from kit import distributed
from kit.collect.collector import TopKCollector
from kit.collect.merge import merge_distributed
from kit.memory import print_plan
from kit.corpus.records import check_source
from kit.lm.models import check_model_name, load_model
from kit.config import RunConfig, config_diff
from kit.lm.cached_store import open_cached_store
from kit.lm.store import TranscoderActivationsStore
from kit.train import checkpoint
from kit.train.trainer import Trainer
from kit.model.transcoder import Transcoder
from kit.finish import finish
from kit.io import write_json

RUN_FILES = ("config.json", "transcoder", "checkpoints", "history.csv", "samples.parquet", "latents.csv",
             "metrics.json", "report.md", "report.html")
"""What every finished run folder holds at its top, whoever wrote it (docs/run-folder.md lists the rest)."""


def prepare(config: RunConfig, out, resume: bool = False, device: str | None = None, model=None, tokenizer=None):
    """Build (and, with `resume`, restore) the store, transcoder, collector and trainer of a run.

    Pass `model` and `tokenizer` to reuse a model already in memory (a notebook that loaded Gemma once).
    """
    out = Path(out)
    check_run_folder(out, config, resume)  # everything the config and the folder tell is checked before loading
    store = open_store(config, device, model, tokenizer)
    return make_trainer(config, store, out, resume)


def open_store(config: RunConfig, device: str | None = None, model=None, tokenizer=None, points=None):
    """Check the source and model, print the memory plan (of a sweep's `points` too), load the model (unless
    given) and open the store. With `config.cache` the store reads that cache (`kit.lm.cached_store`) and no
    model loads; evaluation and the final pass load it when they run it (or use `model`)."""
    rank, world = distributed.rank_world()
    check_source(config.source)
    if model is None:
        check_model_name(config.model)
    device = device or (str(next(model.parameters()).device) if model is not None else distributed.default_device())
    _check_device(device)
    if config.cache is not None:  # a cache that does not fit the run is refused before anything loads
        store = open_cached_store(config, device, (rank, world), model, tokenizer)  # loads no model
    if rank == 0:
        print_plan(config, device, world=world, points=points)
    if config.cache is None:
        if model is None:
            model, tokenizer = load_model(config.model, dtype=getattr(torch, config.model_dtype), device=device)
        store = TranscoderActivationsStore(model, config.source, config.layer, tokenizer=tokenizer,
                                           config=config.store, shard=(rank, world))
    if rank == 0:
        print(f"store: {len(store.holdout_indices)} held-out contexts; padding {store.padding_share():.1%} of the "
              f"positions read so far (pack={config.store.pack})", flush=True)
    return store


def make_trainer(config: RunConfig, store, out, resume: bool = False) -> Trainer:
    """A fresh transcoder, collector and trainer on `store` writing to `out` (restored from its newest intact
    checkpoint with `resume`); every rank starts from the same weights."""
    out = Path(out)
    torch.manual_seed(config.store.seed)
    tc = Transcoder(dataclasses.replace(config.latents, d_in=store.d_in, d_out=store.d_out)).to(store.device)
    collector = TopKCollector(tc.cfg.d_latent, config.collector, store.device)
    trainer = Trainer(tc, store, config.train, out, collector, config_dict=config.to_dict())
    if distributed.rank_world()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_dict())
    if resume:
        trainer.resume()
    return trainer


def ensure_run(config: RunConfig, out, model=None, tokenizer=None, progress: bool = True) -> dict:
    """The metrics of a finished run of `config` in `out`, training it (or resuming it) first if needed."""
    out = Path(out)
    metrics = finished_metrics(config, out)
    if metrics is not None:
        return metrics
    return train_run(config, out, resume=bool(checkpoint.candidates(out)), progress=progress, model=model,
                     tokenizer=tokenizer)


def finished_metrics(config: RunConfig, out) -> dict | None:
    """The metrics of a finished run of `config` in `out`, or None when `out` holds no finished run.

    A finished run of another config is an error: choose another folder or delete it."""
    out = Path(out)
    if (out / "metrics.json").exists() and (out / "config.json").exists():
        if not config_diff(json.loads((out / "config.json").read_text()), config.to_dict()):
            return json.loads((out / "metrics.json").read_text())
        raise ValueError(f"{out} holds a finished run of another config: choose another folder or delete it")
    return None


def start_run(config: RunConfig, out) -> bool:
    """Make `out` ready for an unfinished run of `config` in one process (a notebook building the run cell by
    cell): check it, create it and write config.json, as `prepare` does. True when it holds a checkpoint to resume."""
    out = Path(out)
    resume = bool(checkpoint.candidates(out))
    check_run_folder(out, config, resume)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    return resume


def train_run(config: RunConfig, out, resume: bool = False, device: str | None = None, progress: bool = True,
              stop_at: int | None = None, report: bool = True, model=None, tokenizer=None) -> dict | None:
    """Train, evaluate, collect and write the run folder; returns the metrics (None on ranks other than 0)."""
    trainer = prepare(config, out, resume, device, model, tokenizer)
    start = time.perf_counter()
    trainer.fit(stop_at=stop_at, progress=progress and distributed.rank_world()[0] == 0)
    if trainer.step < config.train.steps:
        return None  # interrupted on purpose (stop_at): the checkpoint holds everything
    merge_distributed(trainer.collector)
    metrics = finish(trainer, config, Path(out), time.perf_counter() - start, progress, report)
    distributed.barrier()
    return metrics


def check_run_folder(out: Path, config: RunConfig, resume: bool) -> None:
    """Refuse, before anything loads: a folder that cannot be written, overwriting a run by accident, and a
    resume with no intact checkpoint, with other settings or of a finished run."""
    base = next(p for p in (out, *out.parents) if p.exists())  # out, or the folder it will be made in
    if not base.is_dir():
        raise FileExistsError(f"cannot use {out} as a run folder: {base} is a file; choose another --out")
    if not os.access(base, os.W_OK):
        raise PermissionError(f"cannot write the run folder {out}: {base} is not writable; choose another --out")
    if not resume:
        if any((out / "checkpoints").glob("step_*")):
            raise FileExistsError(f"{out} already holds a run with checkpoints: pass --resume to continue it, or "
                                  "choose another --out")
        return
    paths = checkpoint.candidates(out)
    if not paths:
        raise FileNotFoundError(f"no checkpoint in {out}; drop --resume to start a new run")
    saved = out / "config.json"
    diff = config_diff(json.loads(saved.read_text()), config.to_dict()) if saved.exists() else []
    if diff:
        raise ValueError(f"cannot resume {out}: its config.json differs ({'; '.join(diff[:6])}); use the "
                         "original preset and options")
    if (out / "metrics.json").exists() and int(paths[0].name.removeprefix("step_")) >= config.train.steps:
        raise ValueError(f"{out} holds a finished run (step {config.train.steps} of {config.train.steps}): --resume "
                         f"has nothing to do and changed nothing; to rebuild its report: python -m kit report {out}")
    damaged = [f"{p.name}: {why}" for p in paths if (why := checkpoint.damage(p)) is not None]
    if len(damaged) == len(paths):
        raise checkpoint.DamagedCheckpoint(f"every checkpoint in {out / 'checkpoints'} is damaged "
                                           f"({'; '.join(damaged)}); move checkpoints/ away to start again")


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError as err:  # torch says which device types exist
        raise ValueError(f"device {device!r} is not a torch device: {err}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device here; use --device cpu")
