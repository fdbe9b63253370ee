"""torchrun support: rank and world size from the environment, gradient all-reduce, barriers.

Each rank reads its own shard of the contexts, computes gradients on it, and averages them with the others'
(an explicit all-reduce rather than a DDP wrapper, so the trainer's loop reads the same on one or many ranks).
NCCL on GPU, gloo on CPU. Every rank runs the same number of steps, so the collectives never hang.
The ranks must hold bit-identical training state: they start from rank 0's weights (`broadcast_`), every
running statistic is reduced over all ranks, and each checkpoint compares the ranks' hashes (`DesyncError`).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes in RANK/WORLD_SIZE; a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> str:
    """This rank's CUDA device if there is one, else the CPU."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def average_gradients(params) -> None:
    """All-reduce and average the gradients of `params` across ranks."""
    _, world = rank_world()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def any_rank(mask: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of a bool tensor across ranks."""
    if rank_world()[1] == 1:
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Elementwise mean of a tensor across ranks (e.g. the activation scales every rank must share)."""
    if rank_world()[1] == 1:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out / rank_world()[1]


def reduce_across_ranks(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Elementwise "sum", "min" or "max" of a tensor across ranks (a copy; `t` itself when there is one rank)."""
    if rank_world()[1] == 1:
        return t
    out = t.clone()
    dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return out


def broadcast_(tensors, src: int = 0) -> None:
    """Overwrite `tensors` in place with rank `src`'s values (e.g. rank 0's freshly initialised weights)."""
    if rank_world()[1] == 1:
        return
    for t in tensors:
        dist.broadcast(t.detach(), src)


class DesyncError(RuntimeError):
    """The ranks' copies of state that must be identical (weights, optimizer state, ...) differ."""


def gather_objects(obj) -> list:
    """`obj` from every rank, in rank order (JSON-sized objects only: store positions)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
