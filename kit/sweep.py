"""Sweeps: several transcoders trained from one pass of the language model, one complete run folder per point.

`python -m kit train --preset cpu --sweep latents.k=16,32,64,128 --out runs/k-sweep` builds one store and one
trainer per point (each with its own optimizer, schedule, collector, history and checkpoints) and feeds every
trainer the same batch; the final pass reads each context once for all of them. Several `--sweep` flags form a
grid. `runs/k-sweep/sweep.json` records the grid, `sweep.csv` holds one row per point (its config diff and every
metric). A point whose loss goes non-finite stops alone (`stopped.json` says why) and the others go on. A resume
restarts every unfinished point from the newest step all of them have an intact checkpoint of, so a killed sweep
ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from kit import distributed
from kit.collect.merge import merge_distributed
from kit.config import ConfigError, RunConfig, config_diff
from kit.finish import finish_many
from kit.io import atomic_write, write_json
from kit.run import check_run_folder, make_trainer, open_store
from kit.train import checkpoint

SHARED = ("model", "layer", "source", "model_dtype", "store.", "train.steps", "collector.ctx_len", "cache", "name")
"""Fields every point shares: they define the one stream of batches (a key equal to or under one of these)."""
STOPPED = "stopped.json"


@dataclass
class Point:
    """One point of a sweep: its name (the folder), the values it sets, its config and run folder."""

    name: str
    values: dict[str, str]
    config: RunConfig
    out: Path
    trainer: object = None
    last: dict | None = None
    """Its newest history row."""

    def status(self) -> str:
        if (self.out / "metrics.json").exists():
            return "finished"
        if (self.out / STOPPED).exists():
            return "stopped: " + json.loads((self.out / STOPPED).read_text())["reason"]
        return "unfinished"


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """`["latents.k=16,32", "train.lr=1e-3,3e-3"]` -> {"latents.k": ["16", "32"], "train.lr": [...]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key or not values:
            raise ConfigError(f"--sweep {item!r}: expected section.field=v1,v2,..., e.g. latents.k=16,32,64")
        if key in grid:
            raise ConfigError(f"--sweep {key} is given twice: list all its values in one flag")
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {item!r} repeats a value: each point must differ")
        shared = [s for s in SHARED if key == s.rstrip(".") or key.startswith(s if s.endswith(".") else s + ".")]
        if shared:
            raise ConfigError(f"--sweep {key}: every point of a sweep shares the model, layer, source and store "
                              "(one stream of batches feeds them all) and the step count; sweep latents.*, "
                              "train.* (but steps), collector.* or analysis.* fields, or run separate trainings")
        grid[key] = values
    return grid


def sweep_points(base: RunConfig, grid: dict[str, list[str]], out) -> list[Point]:
    """Every point of the grid (its cartesian product), each config checked before anything loads."""
    out, keys, points = Path(out), list(grid), []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = ",".join(f"{k}={v}" for k, v in values.items())
        if "/" in name or name.startswith("."):
            raise ConfigError(f"--sweep value in {name!r} cannot name a folder: no '/' and no leading '.'")
        config = base.override([f"{k}={v}" for k, v in values.items()])
        points.append(Point(name, values, config, out / name))
    return points


def run_sweep(base: RunConfig, grid: dict[str, list[str]], out, resume: bool = False, device: str | None = None,
              progress: bool = True, stop_at: int | None = None, report: bool = True, model=None,
              tokenizer=None) -> pd.DataFrame | None:
    """Train every point of `grid` on `base` from one store and write `out/<point>/` run folders, `sweep.json`
    and `sweep.csv`; returns the sweep table (None on ranks other than 0, or when stopped by `stop_at`)."""
    out, rank = Path(out), distributed.rank_world()[0]
    points = sweep_points(base, grid, out)
    _check_sweep_folder(out, base, grid, resume)
    todo = [p for p in points if p.status() == "unfinished"]
    for p in todo:  # every folder is checked before the model loads
        check_run_folder(p.out, p.config, resume and bool(checkpoint.candidates(p.out)))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "sweep.json", {"grid": grid, "base": base.to_dict(), "points": [p.name for p in points]})
    if todo:
        _train(todo, base, resume, device, progress, stop_at, report, model, tokenizer)
        if any(p.trainer is not None and p.trainer.step < base.train.steps for p in todo):
            return None  # interrupted on purpose (stop_at): the checkpoints hold everything
    table = sweep_table(out) if rank == 0 else None
    if rank == 0 and report:
        from kit.report.sweep import write_sweep_report
        md, html = write_sweep_report(out)
        if progress:
            print(f"sweep page: {html} ({md.name} beside it)", flush=True)
    distributed.barrier()
    return table


def _train(todo: list[Point], base: RunConfig, resume: bool, device, progress: bool, stop_at, report: bool,
           model, tokenizer) -> None:
    store = open_store(base, device, model, tokenizer, points=[p.config for p in todo])
    common = _common_step(todo) if resume else None
    for p in todo:
        p.trainer = make_trainer(p.config, store, p.out)
        if common is not None and p.trainer.resume(at_most=common):
            continue
        (p.out / "history.csv").unlink(missing_ok=True)  # restarting from step 0: older rows are void
    step0, end = (todo[0].trainer.step, min(base.train.steps, stop_at or base.train.steps))
    show = progress and distributed.rank_world()[0] == 0
    if show:
        print(f"sweep: {len(todo)} transcoders fed from one store, steps {step0}..{end}", flush=True)
    start, live = time.perf_counter(), list(todo)
    bar = tqdm(range(step0, end), initial=step0, total=base.train.steps, disable=not show, desc="sweep")
    for _ in bar:
        batch = store.get_batch_with_tokens()
        for p in list(live):
            try:
                row = p.trainer.advance(batch, end)
            except FloatingPointError as err:  # raised on every rank alike (Trainer._check_finite)
                live.remove(p)
                _stop(p, str(err))
                continue
            if row is not None:
                p.last = row
        bar.set_postfix_str(" ".join(f"{'/'.join(p.values.values())}:fvu={p.last['fvu']:.3f}" for p in live
                                     if p.last))
        if not live:
            break
    if live and live[0].trainer.step >= base.train.steps:
        for p in live:
            merge_distributed(p.trainer.collector)
        finish_many([p.trainer for p in live], [p.config for p in live], [p.out for p in live],
                    time.perf_counter() - start, progress, report)


def _stop(point: Point, reason: str) -> None:
    point.trainer = None
    if distributed.rank_world()[0] == 0:
        write_json(point.out / STOPPED, {"reason": reason})
        print(f"sweep point {point.name} stopped: {reason}; the other points go on", file=sys.stderr, flush=True)


def _common_step(points: list[Point]) -> int | None:
    """The newest step every point has an intact checkpoint of (None: some point has none, all restart)."""
    newest = []
    for p in points:
        steps = [int(c.name.removeprefix("step_")) for c in checkpoint.candidates(p.out) if checkpoint.damage(c) is None]
        if not steps:
            return None
        newest.append(steps)
    common = min(max(s) for s in newest)
    if not all(common in s for s in newest):  # two are kept; a kill between points leaves them one save apart
        raise checkpoint.DamagedCheckpoint(f"the sweep's points have no checkpoint of step {common} in common: "
                                           "delete the newest step_* of the points that are ahead to resume")
    return common


def _check_sweep_folder(out: Path, base: RunConfig, grid: dict, resume: bool) -> None:
    saved = out / "sweep.json"
    if not saved.exists():
        return
    old = json.loads(saved.read_text())
    diff = config_diff(old["base"], base.to_dict())
    if old["grid"] != grid or diff:
        what = "; ".join(diff[:4]) if diff else f"grid {old['grid']}, now {grid}"
        raise ValueError(f"{out} holds a sweep of other settings ({what}): use its original preset, --set and "
                         "--sweep flags, or another --out")


def sweep_table(out) -> pd.DataFrame:
    """`sweep.csv` of a sweep folder, rebuilt from its points' folders and written atomically: one row per point
    with its status, the values it sets, its folder, its report and every scalar metric."""
    out = Path(out)
    meta = json.loads((out / "sweep.json").read_text())
    base = RunConfig.from_dict(meta["base"])
    rows = []
    for p in sweep_points(base, meta["grid"], out):
        row = {"point": p.name, "status": p.status(), **p.values, "run_dir": p.name,
               "report": f"{p.name}/report.html" if (p.out / "report.html").exists() else ""}
        if (p.out / "metrics.json").exists():
            metrics = json.loads((p.out / "metrics.json").read_text())
            row |= {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write(out / "sweep.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df
