"""Merging collectors across torch.distributed ranks: every rank ends with the same union."""
from __future__ import annotations

import torch

from kit.collect.collector import TopKCollector


@torch.no_grad()
def merge_distributed(collector: TopKCollector) -> TopKCollector:
    """Merge the collectors of all torch.distributed ranks, so every rank holds the same union; a no-op when
    torch.distributed is not initialized. Every rank must call it (it is a collective)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return collector
    world = torch.distributed.get_world_size()
    gathered = {}
    for name, t in collector.state_dict().items():  # ctx_len and seed too: loading checks the ranks agree
        t = t.to(collector.device)  # NCCL gathers CUDA tensors only
        gathered[name] = [torch.empty_like(t) for _ in range(world)]
        torch.distributed.all_gather(gathered[name], t)
    ranks = [TopKCollector(collector.n_latents, collector.config, collector.device) for _ in range(world)]
    for r, other in enumerate(ranks):
        other.load_state_dict({name: parts[r] for name, parts in gathered.items()})
    # the same fold on every rank (rank 0 first) keeps the ranks' states identical
    collector.load_state_dict(ranks[0].merge(*ranks[1:]).state_dict())
    return collector
