"""Atomic, resumable checkpoints of a Trainer: safetensors for tensors, JSON for the rest (no pickle).

Under torchrun every checkpoint also checks that the ranks are in sync: each rank hashes the exact bytes of its
weights, optimizer state and counters, rank 0 writes them all to `step_N/ranks.json`, and if any differ every
rank raises `DesyncError`. Such a checkpoint is still written, for inspection, but `latest` never points at it
and no older checkpoint is pruned, so a resume starts from the last one whose ranks agreed.

Every checkpoint ends with `checksums.json` (the sha256 of each of its files), written last before the rename: a
resume checks them and skips a damaged checkpoint (cut short, altered) for the newest intact one before it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kit import distributed
from kit.config import config_diff
from kit.io import atomic_write, write_text

KEEP = 2
"""Intact checkpoints kept (at least 2: if the newest is damaged later, a resume falls back on the one before)."""
CHECKSUMS = "checksums.json"
_REQUIRED = ("tensors.safetensors", "state.json")


class DamagedCheckpoint(ValueError):
    """A checkpoint whose files are missing, cut short or altered since it was saved."""


def save(trainer) -> Path | None:
    """Write `checkpoints/step_N/` into a temporary folder, then rename it into place, then point `latest` at it.

    Under torchrun every rank calls this: the ranks' collectors are merged, their store positions and state
    hashes gathered, and rank 0 writes; every rank raises `DesyncError` if the hashes differ.
    """
    from kit.collect.merge import merge_distributed
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
    """The state every rank must hold identically (the collector is merged, not shared, so it is left out)."""
    return {k: v for k, v in trainer.state_dict()[0].items() if not k.startswith("collector.")}


def _name(trainer) -> str:
    return f"step_{trainer.step:07d}"


def _write(trainer, stores: list, ranks: dict | None) -> Path:
    root = trainer.run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = _name(trainer)
    tensors, meta = trainer.state_dict()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta["store"] = stores
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if ranks is not None:
        (tmp / "ranks.json").write_text(json.dumps(ranks, indent=1))
    sums = {p.name: _file_sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))  # last: a folder cut short has none, or a wrong one
    final = root / name
    if final.exists():  # the same step saved again after a resume (same contents), or over a damaged copy
        shutil.rmtree(final)
    os.replace(tmp, final)
    if ranks is not None and not ranks["identical"]:
        return final  # kept for inspection, never resumed from
    write_text(root / "latest", name)
    _prune(root, final)
    return final


def _prune(root: Path, newest: Path) -> None:
    """Delete the checkpoints older than the KEEP newest intact ones (`newest`, just written, is intact): a
    damaged checkpoint never counts, so pruning never deletes the last intact one."""
    kept = 0
    for path in sorted((p for p in root.glob("step_*") if p.is_dir() and p.name <= newest.name), reverse=True):
        if kept >= KEEP:
            shutil.rmtree(path)
        elif path == newest or damage(path) is None:
            kept += 1


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def candidates(run_dir) -> list[Path]:
    """The checkpoints a resume may start from, newest first: none newer than `latest`, and none whose ranks
    disagreed (both are kept only for inspection)."""
    root = Path(run_dir) / "checkpoints"
    newest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
    return sorted((p for p in root.glob("step_*") if p.is_dir() and (newest is None or p.name <= newest)
                   and not _desynced(p)), reverse=True)


def _desynced(path: Path) -> bool:
    ranks = path / "ranks.json"
    return ranks.exists() and '"identical": false' in ranks.read_text()


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when each file matches its saved checksum.

    A checkpoint saved before checksums were written is trusted when its files are there (`load` still catches
    one that does not parse)."""
    try:
        sums = json.loads((path / CHECKSUMS).read_text())
    except FileNotFoundError:
        missing = [n for n in _REQUIRED if not (path / n).is_file()]
        return f"{', '.join(missing)} missing" if missing else None
    except (OSError, ValueError):
        return f"{CHECKSUMS} is unreadable"
    if not isinstance(sums, dict) or not set(_REQUIRED) <= set(sums):
        return f"{CHECKSUMS} does not list {' and '.join(_REQUIRED)}"
    for name, want in sums.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if _file_sha256(path / name) != want:
            return f"{name} does not match its checksum: cut short or altered since it was saved"
    return None


def _read(path: Path, device: str) -> tuple[dict, dict]:
    """`(tensors, meta)` of a checkpoint, verified against its checksums; DamagedCheckpoint says what is wrong."""
    why = damage(path)
    if why is not None:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({why})")
    try:
        meta = json.loads((path / "state.json").read_text())
        return load_file(str(path / "tensors.safetensors"), device=device), meta
    except (OSError, ValueError, SafetensorError) as err:  # a checkpoint from before checksums
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({type(err).__name__}: {str(err)[:200]})") from err


def load(trainer, path: Path) -> None:
    """Restore every piece of training state saved by `save`, refusing a checkpoint from another config and
    raising DamagedCheckpoint (before changing anything) for one whose files are damaged."""
    tensors, meta = _read(path, str(trainer.tc.W_dec.device))
    diff = config_diff(meta["config"], trainer.config_dict)
    if diff:
        raise ValueError(f"checkpoint {path} was written with other settings ({'; '.join(diff[:6])}): resume with "
                         "the original preset and options, or start a new run folder")
    trainer.load_state_dict(tensors, meta)
    torch.set_rng_state(tensors["rng.cpu"].cpu())
    if torch.cuda.is_available():
        states = [tensors[k].cpu() for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)
    rank, world = distributed.rank_world()
    if len(meta["store"]) != world:
        raise ValueError(f"checkpoint {path} was written by {len(meta['store'])} ranks; resume with as many "
                         f"(now {world})")
    trainer.store.load_state_dict(meta["store"][rank])
    if trainer.run_dir is not None and rank == 0:
        _truncate_history(trainer.run_dir / "history.csv", trainer.step)


def _truncate_history(path: Path, step: int) -> None:
    """Drop history rows written after the checkpoint, so a resumed run does not log steps twice."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= step]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(keep)
    atomic_write(path, write)
