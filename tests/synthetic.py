"""A store of synthetic activations generated from a planted sparse dictionary (tests and benchmarks)."""
from __future__ import annotations

import torch

from kit.lm.store import TokenBatch


class PlantedDictionaryStore:
    """Batches with x = f @ A and y = f @ B for sparse codes f: a transcoder should recover B's rows.

    Each token activates `k` of `n_atoms` atoms with magnitudes in [0.5, 1.5]. Batch i is drawn from a generator
    seeded with (seed, i), so `state_dict()` is just the batch counter and a resumed stream is identical.
    """

    def __init__(self, d_in: int = 64, d_out: int = 64, n_atoms: int = 128, k: int = 4, batch_size: int = 512,
                 ctx_len: int = 16, seed: int = 0):
        if not 1 <= k <= n_atoms:
            raise ValueError(f"need 1 <= k <= n_atoms, got k={k}, n_atoms={n_atoms}")
        gen = torch.Generator().manual_seed(seed)
        self.A = torch.nn.functional.normalize(torch.randn(n_atoms, d_in, generator=gen), dim=1)
        self.B = torch.nn.functional.normalize(torch.randn(n_atoms, d_out, generator=gen), dim=1)
        self.k, self.batch_size, self.ctx_len, self.seed, self.i = k, batch_size, ctx_len, seed, 0

    def codes(self, i: int) -> torch.Tensor:
        """The sparse codes f [batch_size, n_atoms] of batch i."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i + 1)
        n = self.A.shape[0]
        idx = torch.rand(self.batch_size, n, generator=gen).topk(self.k, dim=1).indices
        vals = 0.5 + torch.rand(self.batch_size, self.k, generator=gen)
        return torch.zeros(self.batch_size, n).scatter_(1, idx, vals)

    def get_batch_with_tokens(self) -> TokenBatch:
        f = self.codes(self.i)
        rows = torch.arange(self.batch_size) + self.i * self.batch_size
        self.i += 1
        zeros = torch.zeros(self.batch_size, dtype=torch.long)
        pos = 1 + rows % (self.ctx_len - 1)
        ctx = rows // (self.ctx_len - 1)
        return TokenBatch(f @ self.A, f @ self.B, zeros, ctx, pos, pos - 1, zeros, ctx * self.ctx_len + pos)

    def get_batch(self):
        batch = self.get_batch_with_tokens()
        return batch.x_in, batch.y_out

    def state_dict(self) -> dict:
        return {"i": self.i, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint stream seed {state['seed']} differs from this store's seed {self.seed}")
        self.i = state["i"]
