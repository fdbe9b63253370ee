"""A local, Pile-shaped text set from the embedded corpus: the stand-in for the GPU path's streamed Pile.

Records look like `monology/pile-uncopyrighted`'s: `{"text": ..., "meta": {"pile_set_name": ...}}`, and document
lengths are drawn from a log-normal, so a few documents are thousands of tokens long and many are short, as in the
Pile (where one-document contexts put padding in a third of the positions at ctx_len 1024).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SET_NAMES = {"code": "Github", "math_science": "ArXiv", "medicine": "PubMed Abstracts", "finance": "HackerNews",
             "legal": "FreeLaw", "news": "Pile-CC", "fiction": "Books3", "politics": "EuroParl",
             "conversation": "Ubuntu IRC", "encyclopedic": "Wikipedia (en)"}


def pile_like_records(n_docs: int = 400, median_chars: int = 1500, sigma: float = 1.4, seed: int = 0,
                      max_chars_per_domain: int = 400_000) -> list[dict]:
    """`n_docs` records cut from the embedded corpus's real text, lengths log-normal around `median_chars`."""
    from kit.corpus.embedded import domains
    rng = np.random.default_rng(seed)
    texts = {d: "\n\n".join(doc.text for doc in docs) for d, docs in domains(max_chars_per_domain).items()}
    cursor = dict.fromkeys(texts, 0)
    names = sorted(texts)
    records = []
    for _ in range(n_docs):
        domain = names[rng.integers(len(names))]
        size = int(np.clip(rng.lognormal(np.log(median_chars), sigma), 40, 60_000))
        start = cursor[domain] if cursor[domain] + size < len(texts[domain]) else 0
        records.append({"text": texts[domain][start:start + size], "meta": {"pile_set_name": SET_NAMES[domain]}})
        cursor[domain] = start + size
    return records


def write_pile_like(path, **options) -> Path:
    """Write `pile_like_records(**options)` as a .jsonl file and return its path."""
    path = Path(path)
    path.write_text("\n".join(json.dumps(r) for r in pile_like_records(**options)) + "\n")
    return path
