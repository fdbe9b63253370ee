"""What did a latent learn? Its text patterns, its direct effect on the logits, and a short label.

Public API (the report and the widgets call these names):
- `top_rows(samples, phase="final")`: the rows to count (one window per latent and rank)
- `length_stats(samples=None, store=None, indices=None, tokenizer=None)`: window and context lengths
- `top_tokens(samples, unit="token", weight="activation", per_latent=True, n=10, tokenizer=None)`
- `direct_logits(transcoder, model, latents)`, `logit_lens(transcoder, model, tokenizer, ...)`,
  `logit_lens_caveat(model, layer)`
- `latent_labels(table, words, n_words=2)`

`samples` is a `samples.parquet` frame (docs/run-folder.md), usually `top_rows(...)` of it: `latent`,
`context_tokens` (token strings, or token ids) and `context_acts` (that latent's activation on each). Token text
is each id decoded alone, or the string with its leading-space marker (GPT-2's "Ġ", SentencePiece's "▁") turned
back into a space.
Shape suffixes: L latents, D model width, V vocabulary, T tokens.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch

from kit.collect.samples import select
from kit.lm.hooks import final_norm_gain, hook_points

_MARKERS = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "\n", "ĉ": "\t"})
_WORD = re.compile(r"\w+")
_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"})


def top_rows(samples: pd.DataFrame, phase: str | None = "final") -> pd.DataFrame:
    """The top-k rows of one phase: interval rows and a second phase would count the same windows again.
    Columns a frame lacks (`kind`, `phase`) are not filtered on; phase=None keeps every phase."""
    return select(samples, phase, "top").reset_index(drop=True)


def _per_unique(values, fn) -> np.ndarray:
    """`fn` applied once per distinct value (token streams repeat a small vocabulary)."""
    codes, uniq = pd.factorize(np.asarray(values))
    return np.array([fn(u) for u in uniq], dtype=object)[codes] if len(codes) else np.array([], dtype=object)


def _texts(tokens: np.ndarray, tokenizer) -> np.ndarray:
    """Text of each token: ids decoded one at a time, strings with their markers undone."""
    if tokens.dtype.kind not in "iu":
        return _per_unique(tokens, lambda t: str(t).translate(_MARKERS))
    if tokenizer is None:
        raise ValueError("context_tokens holds token ids: pass the model's tokenizer to decode them")
    return _per_unique(tokens, lambda t: tokenizer.batch_decode([[int(t)]])[0])


def _long(samples: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """One row per token of every sample window: row, latent, position in the window, text, act."""
    toks = [np.asarray(t) for t in samples["context_tokens"]]
    acts = [np.asarray(a, dtype=np.float64) for a in samples["context_acts"]]
    lens = np.array([len(t) for t in toks])
    if not np.array_equal(lens, [len(a) for a in acts]):
        raise ValueError("every sample needs one context_acts value per context_tokens entry")
    flat = np.concatenate(toks) if toks else np.array([], dtype=np.int64)
    return pd.DataFrame({"row": np.repeat(np.arange(len(samples)), lens),
                         "latent": np.repeat(samples["latent"].to_numpy(), lens),
                         "text": _texts(flat, tokenizer) if len(flat) else np.array([], dtype=object),
                         "act": np.concatenate(acts) if acts else np.array([])})


def _words(long: pd.DataFrame) -> pd.DataFrame:
    """Words (runs of \\w characters) of each window; a word's act is the largest act among its tokens."""
    out = []
    row, latent = long["row"].to_numpy(), long["latent"].to_numpy()
    texts, acts = long["text"].tolist(), long["act"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, row[1:] != row[:-1], True]) if len(row) else []
    for a, b in zip(bounds[:-1], bounds[1:]):
        ends = np.cumsum([len(t) for t in texts[a:b]])
        for m in _WORD.finditer("".join(texts[a:b])):
            first, last = np.searchsorted(ends, [m.start(), m.end() - 1], side="right")
            out.append((row[a], latent[a], m.group(), acts[a + first:a + last + 1].max()))
    return pd.DataFrame(out, columns=["row", "latent", "text", "act"])


def _has_alnum(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _shown(text: str) -> str:
    """A token as a label shows it: stripped, or escaped when it has no letter or digit ('\\n\\n', '␣')."""
    stripped = text.strip()
    return stripped if _has_alnum(stripped) else (stripped or text).translate(_ESCAPES)


def top_tokens(samples: pd.DataFrame, unit: str = "token", weight: str = "activation", per_latent: bool = True,
               n: int = 10, tokenizer=None, symbols: bool = False) -> pd.DataFrame:
    """Most common tokens or words of the sample windows, per latent or overall.

    weight="activation": an item scores the sum of the latent's activations on it over all windows, so only tokens
    it fires on count, and strongly (a word takes its largest token activation, so a word split into several tokens
    counts once); weight="count": occurrences. Tokens are stripped of surrounding whitespace and case is kept (it is
    itself a style signal, docs/design.md); tokens without a letter or digit are skipped unless `symbols` (then they are
    shown escaped, e.g. '\\n\\n': a latent may fire on a separator). Ties break by text.
    Returns `[latent,] rank, text, weight, count`.
    """
    if unit not in ("token", "word") or weight not in ("activation", "count"):
        raise ValueError(f"unit must be 'token' or 'word' and weight 'activation' or 'count', got {unit!r}, {weight!r}")
    long = _long(samples, tokenizer)
    long = _words(long) if unit == "word" else long
    alnum = _per_unique(long["text"], _has_alnum).astype(bool)  # before escaping: '\\n' has a letter
    long = long.assign(text=_per_unique(long["text"], _shown), w=long["act"] if weight == "activation" else 1.0)
    long = long[(long["w"] > 0).to_numpy() & (alnum | (symbols and unit == "token"))]
    keys = ["latent", "text"] if per_latent else ["text"]
    agg = long.groupby(keys, sort=True).agg(weight=("w", "sum"), count=("w", "size")).reset_index()
    agg = agg.sort_values((keys[:-1]) + ["weight", "text"], ascending=[True] * (len(keys) - 1) + [False, True],
                          kind="stable")
    agg["rank"] = agg.groupby(keys[:-1]).cumcount() if per_latent else np.arange(len(agg))
    return agg[agg["rank"] < n][keys[:-1] + ["rank", "text", "weight", "count"]].reset_index(drop=True)


def _describe(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0, "mean": np.nan, "median": np.nan, "min": np.nan, "max": np.nan}
    return {"n": len(v), "mean": v.mean(), "median": np.median(v), "min": v.min(), "max": v.max()}


def length_stats(samples: pd.DataFrame | None = None, store=None, indices=None, tokenizer=None) -> pd.DataFrame:
    """Lengths in tokens and words (whitespace-separated) of the sample windows and of the store contexts
    `indices`, one unit per document piece (BOS and padding excluded). Rows: (what, unit); columns n, mean, median,
    min, max."""
    rows = {}
    if samples is not None:
        long = _long(samples, tokenizer)
        sizes = long.groupby("row").size().reindex(range(len(samples)), fill_value=0)
        rows[("sample windows", "tokens")] = _describe(sizes)
        text = long.groupby("row")["text"].agg("".join)
        rows[("sample windows", "words")] = _describe(text.map(lambda t: len(t.split())))
    if store is not None:
        ctxs = [store.context_at(int(i)) for i in (store.holdout_indices if indices is None else indices)]
        pieces = [c.token_ids[s.start:s.stop].tolist() for c in ctxs for s in c.segments]
        rows[("eval documents", "tokens")] = _describe([len(p) for p in pieces])
        rows[("eval documents", "words")] = _describe([len(t.split()) for t in store.tokenizer.batch_decode(pieces)])
    if not rows:
        raise ValueError("pass samples, or a store (with indices), or both")
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["what", "unit"])


@torch.no_grad()
def direct_logits(transcoder, model, latents) -> torch.Tensor:
    """[len(latents), V] logits of each decoder direction through the final norm's gain and the unembedding.

    The norm's 1/rms factor is one positive scalar per position, so it leaves each row's ranking unchanged and is
    dropped; so is Gemma-2's final logit soft-capping (a monotone tanh).
    """
    gain_D, centre = final_norm_gain(model, hook_points(model, 0))
    W_U = model.get_output_embeddings().weight  # [V, D]
    d_LD = transcoder.W_dec[torch.tensor(np.asarray(latents), dtype=torch.long)].to(W_U.device, torch.float32)
    if centre:
        d_LD = d_LD - d_LD.mean(-1, keepdim=True)
    return (d_LD * gain_D.float()) @ W_U.float().T


def logit_lens(transcoder, model, tokenizer, latents=None, k: int = 10, chunk: int = 128) -> pd.DataFrame:
    """Top `k` promoted and suppressed tokens of each latent's decoder direction (see `direct_logits`), `chunk`
    latents at a time. Returns latent, rank, promoted(_id, _logit), suppressed(_id, _logit); see
    `logit_lens_caveat`."""
    latents = np.arange(transcoder.cfg.d_latent) if latents is None else np.asarray(latents, dtype=np.int64)
    parts = []
    for start in range(0, len(latents), chunk):
        logits = direct_logits(transcoder, model, latents[start:start + chunk])
        parts.append([t.cpu() for t in (*logits.topk(k, dim=1), *(-logits).topk(k, dim=1))])
    up_v, up_i, down_v, down_i = (torch.cat(col).numpy() for col in zip(*parts))
    ids = np.unique(np.concatenate([up_i.ravel(), down_i.ravel()]))
    text = dict(zip(ids.tolist(), tokenizer.batch_decode([[int(i)] for i in ids])))
    return pd.DataFrame({"latent": np.repeat(latents, k), "rank": np.tile(np.arange(k), len(latents)),
                         "promoted_id": up_i.ravel(), "promoted": [text[i] for i in up_i.ravel().tolist()],
                         "promoted_logit": up_v.ravel(), "suppressed_id": down_i.ravel(),
                         "suppressed": [text[i] for i in down_i.ravel().tolist()], "suppressed_logit": -down_v.ravel()})


def logit_lens_caveat(model, layer: int) -> str:
    """Why the direct path is only part of a latent's effect on the output."""
    from kit.lm.hooks import n_layers
    later = n_layers(model) - layer - 1
    return (f"Direct path only: the decoder direction is added to the residual stream at layer {layer} and passes "
            f"through {later} more layers before the final norm and the unembedding, which can read, cancel or "
            "amplify it; these tokens are its direct logit attribution (the 'logit lens' of nostalgebraist, 2020; "
            "Elhage et al., 2021), not its full effect on the next token.")


def latent_labels(table: pd.DataFrame, words: pd.DataFrame, n_words: int = 2,
                  tokens: pd.DataFrame | None = None) -> pd.Series:
    """A short label per latent of `table` (from `kit.interpret.analysis.latent_table`): its top domain if a specialist,
    else its category, then its top `n_words` activation-weighted words (`top_tokens(..., unit="word")`); a latent
    without words takes its top `tokens` instead (`top_tokens(..., symbols=True)`: e.g. a headline separator)."""
    def join(frame):
        return (frame.sort_values(["latent", "rank"], kind="stable").groupby("latent")["text"]
                .agg(lambda s: ", ".join(s.head(n_words))))
    top = join(words) if tokens is None else join(words).combine_first(join(tokens))
    head = np.where(table["category"] == "specialist", table["top_domain"].astype(str), table["category"])
    tail = table["latent"].map(top).fillna("")
    labels = [h if h == "dead" or not t else f"{h} · {t}" for h, t in zip(head, tail)]
    return pd.Series(labels, index=table["latent"].to_numpy(), name="label")
