"""Atomic, resumable checkpoints of a Trainer: safetensors for tensors, JSON for the rest (no pickle).

Under torchrun every checkpoint also checks that the ranks are in sync: each rank hashes the exact bytes of its
weights, optimizer state and counters, rank 0 writes them all to `step_N/ranks.json`, and if any differ every
rank raises `DesyncError`. Such a checkpoint is still written, for inspection, but `latest` never points at it
and no older checkpoint is pruned, so a resume starts from the last one whose ranks agreed.
"""
from __future__ import annotations

import csv
import hashlib
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

    Under torchrun every rank calls this: the ranks' collectors are merged, their store positions and state
    hashes gathered, and rank 0 writes; every rank raises `DesyncError` if the hashes differ.
    """
    from kit.collector import merge_distributed
    rank, world = distributed.rank_world()
    mine = {"store": trainer.store.state_dict(), "hashes": fingerprints(trainer) if world > 1 else None}
    gathered = distributed.gather_objects(mine)
    if trainer.collector is not None:
        merge_distributed(trainer.collector)
    hashes = [g["hashes"] for g in gathered]
    differ = _differing(hashes) if world > 1 else []
    ranks = None if world == 1 else {"ranks": [{"rank": r, "hashes": h} for r, h in enumerate(hashes)],
                                     "identical": not differ, "differ": differ}
    path = _write(trainer, [g["store"] for g in gathered], ranks) if rank == 0 else None
    distributed.barrier()
    if differ:  # every rank read the same gathered hashes, so every rank stops here
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise distributed.DesyncError(
            f"the ranks' training state differs at step {trainer.step} in {shown}; the hashes are in "
            f"{trainer.run_dir / 'checkpoints' / _name(trainer)}/ranks.json and `latest` still points at the last "
            "checkpoint whose ranks agreed")
    return path


def fingerprints(trainer) -> dict[str, str]:
    """sha256 of the exact bytes of every piece of trainer state that all ranks must share, by name."""
    params = [name for name, _ in trainer.tc.named_parameters()]  # the optimizer's order: it got .parameters()
    out = {}
    for name, t in _shared_tensors(trainer).items():
        part = name.split(".")
        if part[0] == "optimizer":  # "optimizer.b_dec.exp_avg" reads better than "optimizer.3.exp_avg"
            name = ".".join(["optimizer", params[int(part[1])], *part[2:]])
        out[name] = _sha256(t)
    counters = {"step": trainer.step, "tokens_seen": trainer.tokens_seen, "scheduler": trainer.scheduler.state_dict()}
    for name, value in counters.items():
        out[name] = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    return out


def _sha256(t: torch.Tensor) -> str:
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(str((t.dtype, tuple(t.shape))).encode() + raw.numpy().tobytes()).hexdigest()


def _differing(hashes: list[dict]) -> list[str]:
    """Names whose hash is not the same on every rank (or that some rank lacks)."""
    names = sorted(set().union(*hashes))
    return [n for n in names if len({h.get(n) for h in hashes}) > 1]


def _shared_tensors(trainer) -> dict:
    tensors = {"since_fired": trainer.since_fired.cpu(), "scales": trainer.scales}
    _flatten("transcoder", trainer.tc.state_dict(), tensors)
    _flatten("optimizer", {str(k): v for k, v in trainer.optimizer.state_dict()["state"].items()}, tensors)
    return tensors


def _name(trainer) -> str:
    return f"step_{trainer.step:07d}"


def _write(trainer, stores: list, ranks: dict | None) -> Path:
    root = trainer.run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = _name(trainer)
    tensors = _shared_tensors(trainer) | {"rng.cpu": torch.get_rng_state()}
    opt = trainer.optimizer.state_dict()
    if trainer.collector is not None:
        _flatten("collector", trainer.collector.state_dict(), tensors)
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {"step": trainer.step, "tokens_seen": trainer.tokens_seen, "scheduler": trainer.scheduler.state_dict(),
            "param_groups": opt["param_groups"], "store": stores, "config": trainer.config_dict}
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if ranks is not None:
        (tmp / "ranks.json").write_text(json.dumps(ranks, indent=1))
    final = root / name
    if final.exists():  # the same step saved again after a resume: the contents are identical
        shutil.rmtree(final)
    os.replace(tmp, final)
    if ranks is not None and not ranks["identical"]:
        return final  # kept for inspection, never resumed from
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
    trainer.tokens_seen = meta.get("tokens_seen")  # None in older checkpoints: the trainer recounts it
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
