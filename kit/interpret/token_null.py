"""The token-identity null: does a specialist's domain preference go beyond the token types it fires on?

A latent that fires on one word (' thou', ' licence') prefers the domains that word occurs in, whatever it encodes.
Under this null the latent fires on every scored token of vocabulary id v with its own pooled rate
r_v = (its firings on v) / (scored tokens of v), the same in every domain, so token identity alone sets where its
firings fall. The expected units per domain follow the level that classifies:

- document (the default unit): a latent fires in document j with probability 1 - Π_v (1 - r_v)^n_jv (n_jv: scored
  tokens of v in j), so it is expected in E_d = Σ over the documents of d of that many documents of d. With one
  rate for every type this is `DocumentStats.expected_firing_documents`, the base the analysis already uses.
- token: its firing tokens of v are spread over the domains as v's scored tokens are,
  E_d = Σ_v (firings on v) · n_vd / n_v.

`kit.interpret.specialization` compares the observed units with Σunits · E_d / ΣE (G-test, Benjamini-Hochberg over
the specialists): a specialist is a *topic specialist* when its top domain holds significantly more than token
identity predicts. Shape suffixes: N documents, L latents, V vocabulary ids, D domains, S latents tested, P pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

MAX_RATE = 1 - 1e-12
"""Rates are clipped here: a latent firing on every token of v then fires in every document holding v, and the
logarithms stay finite inside the sparse products."""


@dataclass(frozen=True)
class TokenTypes:
    """Which vocabulary ids each document holds and each latent fires on (scored tokens only)."""

    count_NV: sparse.csr_array
    """Scored tokens of each vocabulary id in each document (int64)."""
    fire_LV: sparse.csr_array
    """Each latent's firings on each vocabulary id, all documents together (int64)."""

    @classmethod
    def from_token_acts(cls, acts_ML, index_M, token_M, n_docs: int) -> TokenTypes:
        """From the activations `acts_ML` of scored tokens, each token's document index `index_M` (0..n_docs-1) and
        vocabulary id `token_M`."""
        counter = FiringCounter(np.asarray(acts_ML).shape[1])
        counter.add(torch.as_tensor(np.asarray(acts_ML)), np.asarray(token_M))
        return counter.result(token_counts(index_M, token_M, n_docs))


def token_counts(index_M, token_M, n_docs: int, n_ids: int | None = None) -> sparse.csr_array:
    """`count_NV`: scored tokens of each vocabulary id in each document."""
    token_M = np.asarray(token_M, dtype=np.int64)
    n_ids = n_ids or int(token_M.max(initial=-1)) + 1
    ones = np.ones(len(token_M), dtype=np.int64)
    return sparse.coo_array((ones, (np.asarray(index_M, dtype=np.int64), token_M)), shape=(n_docs, n_ids)).tocsr()


class FiringCounter:
    """Each latent's firings per vocabulary id, filled chunk by chunk."""

    def __init__(self, n_latents: int):
        self.n_latents, self._keys, self._counts = n_latents, [], []

    def add(self, acts_ML: torch.Tensor, token_M: np.ndarray) -> None:
        """Fold in one chunk: activations of its scored tokens and their vocabulary ids."""
        row_P, latent_P = (acts_ML > 0).nonzero().T.cpu().numpy()  # one pair per (token, latent) firing
        key_P = latent_P.astype(np.int64) << 32 | np.asarray(token_M, dtype=np.int64)[row_P]
        keys, counts = np.unique(key_P, return_counts=True)  # reduced per chunk: a latent repeats on a word
        self._keys.append(keys)
        self._counts.append(counts)

    def result(self, count_NV: sparse.csr_array) -> TokenTypes:
        """The `TokenTypes` of these firings, with the documents' `count_NV`."""
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=np.int64)
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, dtype=np.int64)
        shape = (self.n_latents, count_NV.shape[1])
        fire = sparse.coo_array((counts.astype(np.int64), (keys >> 32, keys & 0xFFFFFFFF)), shape=shape).tocsr()
        fire.sum_duplicates()
        return TokenTypes(count_NV, fire)


def identity_units(types: TokenTypes, domain_N: np.ndarray, n_domains: int, latents_S, level: str = "document",
                   block: int = 512) -> np.ndarray:
    """`[S, D]`: each latent's units per domain expected from the token types it fires on alone (module docstring).
    A latent that never fired gets a row of zeros."""
    latents_S = np.asarray(latents_S, dtype=np.int64)
    onehot_ND = sparse.csr_array((np.ones(len(domain_N)), (np.arange(len(domain_N)), np.asarray(domain_N))),
                                 shape=(len(domain_N), n_domains))
    n_V = np.asarray(types.count_NV.sum(0), dtype=np.float64).ravel()
    inv_V = np.divide(1.0, n_V, out=np.zeros_like(n_V), where=n_V > 0)
    domain_share_VD = sparse.diags_array(inv_V) @ (types.count_NV.T @ onehot_ND)  # each id's domain distribution
    out = np.zeros((len(latents_S), n_domains))
    for start in range(0, len(latents_S), block):  # caps the dense [N, block] intermediate
        fire_SV = types.fire_LV[latents_S[start:start + block]].astype(np.float64)
        if level == "token":
            out[start:start + block] = (fire_SV @ domain_share_VD).toarray()
            continue
        rate_SV = (fire_SV @ sparse.diags_array(inv_V)).tocsr()
        rate_SV.data = np.log1p(-np.minimum(rate_SV.data, MAX_RATE))  # log of keeping quiet on one token of v
        log_quiet_NS = (types.count_NV.astype(np.float64) @ rate_SV.T).toarray()
        out[start:start + block] = (onehot_ND.T @ -np.expm1(log_quiet_NS)).T
    return out
