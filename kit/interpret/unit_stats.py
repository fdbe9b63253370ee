"""Per-document firing statistics of every latent and the tests `kit.interpret.specialization` runs on them.

A document is one unit however many held-out contexts it spans (and a packed context may hold several), so no test
counts one long document as many independent observations; `kit.interpret.analysis` explains the base rates. Given
the scored tokens' vocabulary ids, the statistics also carry `TokenTypes` for the token-identity null
(`kit.interpret.token_null`). Shape suffixes: N documents, L latents, D domains, M scored tokens, K (domain,
length) groups.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps

from kit.config import LEVELS
from kit.interpret.token_null import FiringCounter, TokenTypes, token_counts


@dataclass(frozen=True)
class DocumentStats:
    """Per-document firing counts and activation mass of every latent, with each document's domain."""

    count_NL: np.ndarray
    """Scored tokens of each document on which each latent fired (int32)."""
    mass_NL: np.ndarray
    """Sum of each latent's activations over each document's scored tokens (float32)."""
    max_NL: np.ndarray | None
    """Each latent's largest activation in each document (float32), or None."""
    tokens_N: np.ndarray
    """Scored tokens per document (BOS and padding are never scored)."""
    domain_N: np.ndarray
    """Domain code of each document: an index into `domain_names`."""
    domain_names: tuple[str, ...]
    """Domain names by code."""
    doc_ids_N: np.ndarray | None = None
    """The source's id of each document, or None."""
    types: TokenTypes | None = None
    """Vocabulary ids per document and each latent's firings per id, for the token-identity null; or None."""

    def __post_init__(self):
        n, n_latents = self.count_NL.shape
        shapes = [self.mass_NL.shape, (n, n_latents) if self.max_NL is None else self.max_NL.shape]
        if shapes != [(n, n_latents)] * 2 or self.tokens_N.shape != (n,) or self.domain_N.shape != (n,):
            raise ValueError(f"count_NL, mass_NL and max_NL must share one [N, L] shape and tokens_N, domain_N be "
                             f"[N]; got {self.count_NL.shape}, {shapes}, {self.tokens_N.shape}, {self.domain_N.shape}")
        if n and not 0 <= self.domain_N.min() <= self.domain_N.max() < len(self.domain_names):
            raise ValueError(f"domain codes must index domain_names ({len(self.domain_names)} names)")
        if self.types is not None and (self.types.count_NV.shape[0], self.types.fire_LV.shape[0]) != (n, n_latents):
            raise ValueError("types must count the same documents and latents as count_NL")

    @classmethod
    def from_token_acts(cls, acts_ML, doc_M, domain_M, domain_names, token_M=None) -> DocumentStats:
        """Build from the activations `acts_ML` of scored tokens, each token's document id `doc_M` (any integers),
        domain code `domain_M` and, for the token-identity null, vocabulary id `token_M`; documents come out sorted
        by id."""
        doc_ids_N, doc_M = np.unique(np.asarray(doc_M), return_inverse=True)
        domain_N = _one_domain_per_document(doc_M, np.asarray(domain_M), len(doc_ids_N))
        reduced = _reduce(torch.as_tensor(acts_ML), torch.as_tensor(doc_M, dtype=torch.long), len(doc_ids_N))
        count, mass, mx = (t.cpu().numpy() for t in reduced)
        tokens_N = np.bincount(doc_M, minlength=len(doc_ids_N))
        types = None if token_M is None else TokenTypes.from_token_acts(acts_ML, doc_M, token_M, len(doc_ids_N))
        return cls(count, mass, mx, tokens_N, domain_N, tuple(domain_names), doc_ids_N, types)

    def with_domains(self, domain_N: np.ndarray) -> DocumentStats:
        """The same counts with other domain labels (the shuffled-label null permutes them across documents)."""
        return dataclasses.replace(self, domain_N=np.asarray(domain_N))

    def by_domain(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """`(units_LD, base_LD)`: each latent's firing units per domain, and the share of them each domain should
        hold if the latent ignored domains (see `kit.interpret.analysis`); `base_LD` is `[1, D]` at the token level."""
        n_domains = len(self.domain_names)
        if level == "token":
            units_LD = _sum_by_domain(self.count_NL, self.domain_N, n_domains)
            tokens_D = np.bincount(self.domain_N, weights=self.tokens_N, minlength=n_domains)
            return units_LD, (tokens_D / tokens_D.sum())[None, :]
        if level != "document":
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        expected_LD = self.expected_firing_documents()
        with np.errstate(invalid="ignore", divide="ignore"):
            base_LD = expected_LD / expected_LD.sum(1, keepdims=True)
        return _sum_by_domain(self.count_NL > 0, self.domain_N, n_domains), base_LD

    def expected_firing_documents(self, block: int = 4096) -> np.ndarray:
        """`[L, D]`: Σ over documents of domain d of 1 - (1 - p)^n_doc, the number of them a latent firing on each
        scored token independently with its overall rate p would fire in."""
        p_L = self.count_NL.sum(0, dtype=np.float64) / max(self.tokens_N.sum(), 1)
        # documents of one domain and length contribute alike: sum over (domain, length) groups, not documents
        groups, weight_K = np.unique(np.stack([self.domain_N, self.tokens_N], 1), axis=0, return_counts=True)
        onehot_KD = np.zeros((len(groups), len(self.domain_names)))
        onehot_KD[np.arange(len(groups)), groups[:, 0]] = weight_K
        out = np.empty((len(p_L), len(self.domain_names)))
        for start in range(0, len(p_L), block):  # caps the [L, K] intermediate
            with np.errstate(divide="ignore", invalid="ignore"):
                fire_LK = -np.expm1(np.log1p(-p_L[start:start + block, None]) * groups[None, :, 1])
            out[start:start + block] = np.nan_to_num(fire_LK, nan=0.0) @ onehot_KD  # 0 * log(0): empty document
        return out


def _sum_by_domain(values_NL: np.ndarray, domain_N: np.ndarray, n_domains: int) -> np.ndarray:
    return np.stack([values_NL[domain_N == d].sum(0, dtype=np.int64) for d in range(n_domains)], 1)


def _one_domain_per_document(doc_M: np.ndarray, domain_M: np.ndarray, n: int) -> np.ndarray:
    domain_N = np.zeros(n, dtype=np.int64)
    domain_N[doc_M] = domain_M
    if not np.array_equal(domain_N[doc_M], domain_M):
        raise ValueError("every token of a document must carry the document's one domain")
    return domain_N


def _reduce(acts_ML: torch.Tensor, unit_M: torch.Tensor, n: int):
    """Per-unit firing count, activation sum and max of every latent: `[n, L]` each."""
    acts = acts_ML.float()
    shape = (n, acts.shape[1])
    count = torch.zeros(shape, device=acts.device).index_add_(0, unit_M, (acts > 0).float())
    mass = torch.zeros(shape, device=acts.device).index_add_(0, unit_M, acts)
    index_ML = unit_M[:, None].expand_as(acts)
    mx = torch.zeros(shape, device=acts.device).scatter_reduce_(0, index_ML, acts, "amax", include_self=True)
    return count.to(torch.int32), mass, mx


class _Accumulator:
    """Per-document sums and maxima of one transcoder, filled chunk by chunk (a document may span chunks)."""

    def __init__(self, n: int, n_latents: int):
        self.count = np.zeros((n, n_latents), dtype=np.int32)
        self.mass = np.zeros((n, n_latents), dtype=np.float32)
        self.max = np.zeros((n, n_latents), dtype=np.float32)

    def add(self, docs: np.ndarray, count, mass, mx) -> None:
        """Fold in the `_reduce` output of the distinct documents `docs` of one chunk."""
        self.count[docs] += count.cpu().numpy()
        self.mass[docs] += mass.cpu().numpy()
        self.max[docs] = np.maximum(self.max[docs], mx.cpu().numpy())


def _documents(store, indices: list[int]):
    """Sorted document ids of the contexts' scored tokens, each document's domain code, and its scored tokens."""
    prov = store.token_provenance(indices)
    scored = prov.doc_ids >= 0
    doc_ids_N, doc_M = np.unique(prov.doc_ids[scored], return_inverse=True)
    domain_N = _one_domain_per_document(doc_M, prov.domains[scored], len(doc_ids_N))
    return doc_ids_N, domain_N, np.bincount(doc_M, minlength=len(doc_ids_N))


@torch.no_grad()
def stats_for_transcoders(transcoders: list, store, indices, batch_contexts: int) -> list[DocumentStats]:
    """`DocumentStats` of several transcoders on the same contexts, running the language model once."""
    indices = [int(i) for i in indices]
    if not indices or batch_contexts < 1:
        raise ValueError(f"need at least one context index and batch_contexts >= 1, got {len(indices)} and "
                         f"{batch_contexts}")
    doc_ids_N, domain_N, tokens_N = _documents(store, indices)
    accs = [_Accumulator(len(doc_ids_N), tc.cfg.d_latent) for tc in transcoders]
    firings, index_C, token_C = [FiringCounter(tc.cfg.d_latent) for tc in transcoders], [], []
    modes = [tc.training for tc in transcoders]
    for tc in transcoders:
        tc.eval()  # batchtopk uses its frozen threshold only in eval mode
    try:
        for start in range(0, len(indices), batch_contexts):
            chunk = indices[start:start + batch_contexts]
            x, _, mask = store.activations_for_contexts(chunk)
            doc_NT, mask_NT = store.token_provenance(chunk).doc_ids, mask.cpu().numpy()
            if not np.array_equal(doc_NT >= 0, mask_NT):
                raise ValueError("the store's mask and its token provenance disagree on which tokens are scored")
            docs, local_M = np.unique(np.searchsorted(doc_ids_N, doc_NT[mask_NT]), return_inverse=True)
            token_M = store.tokens_for_contexts(chunk)[0].numpy()[mask_NT]
            index_C.append(docs[local_M])
            token_C.append(token_M)
            for tc, acc, fired in zip(transcoders, accs, firings):
                dev = tc.W_dec.device
                acts = tc.encode(x[mask].to(dev, tc.W_dec.dtype))
                acc.add(docs, *_reduce(acts, torch.as_tensor(local_M, device=dev), len(docs)))
                fired.add(acts, token_M)
    finally:
        for tc, mode in zip(transcoders, modes):
            tc.train(mode)
    codes = np.unique(domain_N)  # the domains present, in the store's code order
    names = tuple(store.domain_names[c] for c in codes)
    count_NV = token_counts(np.concatenate(index_C), np.concatenate(token_C), len(doc_ids_N))
    return [DocumentStats(a.count, a.mass, a.max, tokens_N, np.searchsorted(codes, domain_N), names, doc_ids_N,
                          fired.result(count_NV)) for a, fired in zip(accs, firings)]


def document_stats(transcoder, store, indices, batch_contexts: int = 32) -> DocumentStats:
    """Per-document statistics of `transcoder` on the store contexts `indices` (e.g. `store.holdout_indices`):
    every document met in them, aggregated over all its scored tokens there."""
    return stats_for_transcoders([transcoder], store, indices, batch_contexts)[0]


def bh_adjust(p_L) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values (untested latents) stay NaN and do not count as tests."""
    p = np.asarray(p_L, dtype=np.float64)
    q, ok = np.full_like(p, np.nan), ~np.isnan(p)
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * ok.sum() / np.arange(1, ok.sum() + 1)
    q_ok = np.empty_like(scaled)
    q_ok[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q[ok] = q_ok
    return q


def g_test(units_LD: np.ndarray, base) -> tuple[np.ndarray, np.ndarray]:
    """G statistic and p-value of each latent's units per domain against Σunits · base (NaN if it never fired).

    `base` is `[D]` or `[L, D]`; domains whose base is zero (or NaN) drop out of a latent's test, which has
    (domains left - 1) degrees of freedom; a unit in such a domain makes G infinite.
    """
    obs_LD = np.asarray(units_LD, dtype=np.float64)
    base_LD = np.broadcast_to(np.asarray(base, dtype=np.float64), obs_LD.shape)
    keep_LD = base_LD > 0
    kept_LD = np.where(keep_LD, base_LD, 0.0)
    total_L, dof_L = obs_LD.sum(1), keep_LD.sum(1) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        exp_LD = total_L[:, None] * kept_LD / kept_LD.sum(1, keepdims=True)
        g = 2 * np.where(obs_LD > 0, obs_LD * np.log(obs_LD / exp_LD), 0.0).sum(1)
    ok = (total_L > 0) & (dof_L >= 1)
    g = np.where(ok, g, np.nan)
    return g, np.where(ok, sps.chi2.sf(g, np.maximum(dof_L, 1)), np.nan)
