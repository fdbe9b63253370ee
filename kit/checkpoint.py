"""Atomic, resumable checkpoints of a Trainer: safetensors for tensors, JSON for the rest (no pickle)."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kit import distributed

KEEP = 2


def _flatten(prefix: str, tree: dict, out: dict) -> None:
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value.detach().contiguous().cpu()


def _unflatten(prefix: str, tensors: dict) -> dict:
    tree: dict = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        *path, last = name[len(prefix) + 1:].split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def save(trainer) -> Path | None:
    """Write `checkpoints/step_N/` into a temporary folder, then rename it into place, then point `latest` at it.

    Under torchrun every rank calls this: the ranks' collectors are merged and their store positions gathered,
    and rank 0 writes.
    """
    from kit.collector import merge_distributed
    stores = distributed.gather_objects(trainer.store.state_dict())
    if trainer.collector is not None:
        merge_distributed(trainer.collector)
    if distributed.rank_world()[0] != 0:
        distributed.barrier()
        return None
    path = _write(trainer, stores)
    distributed.barrier()
    return path


def _write(trainer, stores: list) -> Path:
    root = trainer.run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{trainer.step:07d}"
    tensors = {"since_fired": trainer.since_fired.cpu(), "rng.cpu": torch.get_rng_state(), "scales": trainer.scales}
    _flatten("transcoder", trainer.tc.state_dict(), tensors)
    opt = trainer.optimizer.state_dict()
    _flatten("optimizer", {str(k): v for k, v in opt["state"].items()}, tensors)
    if trainer.collector is not None:
        _flatten("collector", trainer.collector.state_dict(), tensors)
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {"step": trainer.step, "scheduler": trainer.scheduler.state_dict(), "param_groups": opt["param_groups"],
            "store": stores, "config": trainer.config_dict}
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    final = root / name
    if final.exists():  # the same step saved again after a resume: the contents are identical
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / "latest", name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest(run_dir) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def load(trainer, path: Path) -> None:
    """Restore every piece of training state saved by `save`, refusing a checkpoint from another config."""
    meta = json.loads((path / "state.json").read_text())
    diff = config_diff(meta["config"], trainer.config_dict)
    if diff:
        raise ValueError(f"checkpoint {path} was written with other settings ({'; '.join(diff[:6])}): resume with "
                         "the original preset and options, or start a new run folder")
    tensors = load_file(str(path / "tensors.safetensors"), device=str(trainer.tc.W_dec.device))
    trainer.tc.load_state_dict(_unflatten("transcoder", tensors))
    state = {int(k): v for k, v in _unflatten("optimizer", tensors).items()}
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    trainer.scheduler.load_state_dict(meta["scheduler"])
    trainer.since_fired.copy_(tensors["since_fired"])
    trainer.scales = tensors["scales"].cpu()
    torch.set_rng_state(tensors["rng.cpu"].cpu())
    if torch.cuda.is_available():
        states = [tensors[k].cpu() for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)
    if trainer.collector is not None:
        trainer.collector.load_state_dict(_unflatten("collector", tensors))
    rank, world = distributed.rank_world()
    if len(meta["store"]) != world:
        raise ValueError(f"checkpoint {path} was written by {len(meta['store'])} ranks; resume with as many "
                         f"(now {world})")
    trainer.store.load_state_dict(meta["store"][rank])
    trainer.step = meta["step"]
    if trainer.run_dir is not None and rank == 0:
        _truncate_history(trainer.run_dir / "history.csv", trainer.step)


def config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


def _truncate_history(path: Path, step: int) -> None:
    """Drop history rows written after the checkpoint, so a resumed run does not log steps twice."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    os.replace(tmp, path)
