"""After the training loop: save weights, evaluate, run the frozen final pass, write samples, metrics and report.

`finish` does it for one trainer, `finish_many` for the trainers of a sweep, which share one store: the final
pass reads every context with the language model once and scores it with every transcoder.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from kit import distributed
from kit.collect.final_pass import InputCache, final_pass_many, latent_table, samples_frame
from kit.collect.merge import merge_distributed
from kit.collect.samples import select, topk_retention
from kit.config import RunConfig
from kit.interpret.evaluate import evaluate_many
from kit.io import atomic_write, write_json


def finish(trainer, config: RunConfig, out: Path, seconds: float, progress: bool, report: bool) -> dict | None:
    """Finish one run: every rank takes part (each evaluates and final-passes the contexts it owns, the results
    are merged exactly) and rank 0 writes the folder; returns the metrics (None on other ranks)."""
    return finish_many([trainer], [config], [Path(out)], seconds, progress, report)[0]


def finish_many(trainers, configs: list[RunConfig], outs: list[Path], seconds: float, progress: bool,
                report: bool) -> list[dict | None]:
    """Finish the runs of `trainers` (all on the same store); `seconds` is the training loop's wall time."""
    rank, _ = distributed.rank_world()
    store, show = trainers[0].store, progress and rank == 0
    tcs = [t.export().eval() for t in trainers]
    if rank == 0:
        for tc, out in zip(tcs, outs):
            tc.save(out / "transcoder")
    if show:
        print(f"evaluating {len(tcs)} transcoder(s) on {configs[0].eval_contexts} held-out contexts (clean, ablated "
              f"and {len(tcs)} spliced pass(es) of the language model)", flush=True)
    metrics = evaluate_many(tcs, store, configs[0].eval_contexts, [t.dead_fraction for t in trainers],
                            across_ranks=True)  # the clean and ablated passes run once for every point
    cache = InputCache(store)  # the final pass keeps the inputs, so the windows are re-scored without the LM
    phases = [{"training": t.collector} for t in trainers]
    step = trainers[0].step
    for phase, contexts in (("final", store.consumed()),
                            ("heldout", {i: None for i in store.holdout_indices if store.owns(i)})):
        collected = final_pass_many(tcs, store, contexts, [c.collector for c in configs], step, show, cache)
        for p, collector in zip(phases, collected):
            p[phase] = merge_distributed(collector)
    frames = [distributed.gather_objects(samples_frame(p, tc, store, show, cache)) for p, tc in zip(phases, tcs)]
    padding = distributed.gather_objects(store.padding_counts())
    del cache
    if rank != 0:
        return [None] * len(trainers)
    padding_share = sum(p for p, _ in padding) / max(sum(n for _, n in padding), 1)
    for t, c, out, tc, m, f in zip(trainers, configs, outs, tcs, metrics, frames):
        df = sort_samples(pd.concat(f, ignore_index=True))
        per_latent, total = topk_retention(select(df, "training", None), select(df, "final", None))
        m |= {"topk_retention": total, "tokens_seen": t.tokens_seen, "padding_share": padding_share,
              "train_seconds": seconds, "step_seconds": t.busy_seconds, "collector": t.collector.summary()}
        write_samples(out / "samples.parquet", df, store)
        latent_table(df, per_latent, tc.cfg.d_latent).to_csv(out / "latents.csv", index=False)
        write_json(out / "metrics.json", m)
        if report:
            from kit.interpret.interpretation import interpret_run
            from kit.report.write import write_report
            write_report(out, interpret_run(out, store))
    return metrics


def sort_samples(df):
    """Samples in one canonical order (phase, kind, latent, interval, rank), whichever ranks built them."""
    if df.empty:
        return df
    order = {"training": 0, "final": 1, "heldout": 2}
    key = df["phase"].map(order)
    return df.assign(_p=key).sort_values(["_p", "kind", "latent", "interval", "rank"]).drop(columns="_p") \
        .reset_index(drop=True)


def write_samples(path: Path, df, store) -> None:
    """samples.parquet, atomically, with the attribution notice of every source it quotes in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from kit.corpus.attribution import attribution_notice
    sources = sorted(set(df["source"])) if len(df) else []
    try:
        notice = attribution_notice(sources)
    except ValueError:  # a user's own source: name it, there is no licence we know of
        notice = "Text from: " + ", ".join(sources)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"attribution": notice.encode(),
                                           b"context_acts_weights": b"final"})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
