"""Command line: `python -m kit train|report|notebooks` (and `torchrun ... -m kit train` on several GPUs)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_HELP = """Train a transcoder and write its run folder (config.json, transcoder/, checkpoints/, history.csv,
samples.parquet, latents.csv, metrics.json, report.md, report.html).

presets:
  smoke          embedded SmolLM2-135M, layer 8, 4,608 TopK latents, ~160k tokens: a few minutes on 2 cores
  cpu            embedded SmolLM2-135M, layer 8, 9,216 TopK latents, 1.6M tokens: about half an hour on 2 cores
  gemma-2-2b-l8  google/gemma-2-2b (gated: set HF_TOKEN), layer 8, 16,384 TopK latents, bf16, 246M tokens (GPU)

examples:
  python -m kit train --preset smoke --out runs/smoke
  python -m kit train --preset smoke --out runs/smoke --resume          # continue after a kill
  python -m kit train --preset cpu --set train.steps=400 --set latents.k=64
  torchrun --nproc_per_node 8 -m kit train --preset gemma-2-2b-l8 --out runs/gemma
  python -m kit train --preset gemma-2-2b-l8 --dry-run --device-gib 80   # memory plan only, loads nothing
  python -m kit train --preset cpu --sweep latents.k=16,32,64,128 --out runs/k-sweep  # 4 transcoders, one LM pass
  python -m kit train --preset smoke --sweep latents.k=16,32 --sweep train.lr=1e-3,3e-3  # a 2 x 2 grid
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kit", description="transcoder kit")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a transcoder", description=TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", default="smoke", help="preset name: smoke, cpu or gemma-2-2b-l8 (default smoke)")
    t.add_argument("--out", type=Path, help="run folder (default runs/<preset>)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. train.steps=100, store.batch_size=2048, model=gpt2; "
                        "sections: latents, store, train, collector (repeatable)")
    t.add_argument("--sweep", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="train one transcoder per value from the same store batches, e.g. latents.k=16,32,64; "
                        "several --sweep flags form a grid; writes OUT/<point>/ run folders and OUT/sweep.csv")
    t.add_argument("--device", help="torch device (default: this rank's CUDA device, else cpu)")
    t.add_argument("--no-report", action="store_true", help="skip report.md/report.html")
    t.add_argument("--show-config", action="store_true", help="print the resolved config as JSON and exit")
    t.add_argument("--dry-run", action="store_true",
                   help="print the run's memory plan (bytes per component vs the device) and exit; loads nothing")
    t.add_argument("--device-gib", type=float,
                   help="device memory for --dry-run in GiB (default: this machine's CUDA device, if any)")
    from kit.cache_cmd import CACHE_HELP, add_cache_arguments  # light: no torch
    add_cache_arguments(sub.add_parser("cache", help="write a preset's training activations to disk (safetensors)",
                                       description=CACHE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter))
    r = sub.add_parser("report", help="rebuild report.md and report.html of a finished run, or sweep.md and "
                                      "sweep.html of a sweep folder (its sweep.csv refreshed first)")
    r.add_argument("run_dir", type=Path, help="a run folder, or a sweep folder (the --out of a --sweep training)")
    n = sub.add_parser("notebooks", help="execute the notebooks top to bottom, saving executed copies")
    n.add_argument("--out", type=Path, default=Path("runs/smoke"), help="where executed notebooks go")
    n.add_argument("names", nargs="*", help="notebook stems (default: all in notebooks/)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        _dispatch(args)
    except Exception as err:
        if not _bad_input(err):
            raise  # a bug: its traceback is what a bug report needs
        raise SystemExit("error: " + " ".join(str(err).split())) from None  # one line, however the message wraps


def _bad_input(err: Exception) -> bool:
    """Whether `err` is about the user's input or machine (a value, a path, a model, the network), not a bug."""
    from kit.lm.models import ModelLoadError  # only on error: `--help` stays fast
    return isinstance(err, (ValueError, OSError, ModelLoadError))


def _dispatch(args) -> None:
    if args.command == "train":
        _train(args)
    elif args.command == "report":
        _report(args.run_dir)
    elif args.command == "cache":
        from kit.cache_cmd import cache_command
        cache_command(args)
    else:
        from kit.notebooks import run_notebooks
        run_notebooks(args.names, args.out)


def _report(run_dir: Path) -> None:
    """Rebuild a run's report, interpreting the run first (model needed) if it was never interpreted; or, for a
    sweep folder (it holds sweep.json), refresh sweep.csv from the points' folders and write the sweep page."""
    if (run_dir / "sweep.json").exists():
        from kit.report.sweep import write_sweep_report
        from kit.sweep import sweep_table
        sweep_table(run_dir)
        md, html = write_sweep_report(run_dir)
        print(f"wrote {md} and {html}")
        return
    from kit.interpret.interpretation import ensure_interpretation
    from kit.report.write import write_report
    if not (run_dir / "config.json").exists():
        raise SystemExit(f"error: {run_dir} is neither a run folder (no config.json) nor a sweep folder (no "
                         "sweep.json); pass the --out of a training run or of a sweep")
    needed = ("metrics.json", "samples.parquet", "latents.csv", "history.csv", "transcoder/model.safetensors")
    if missing := [name for name in needed if not (run_dir / name).exists()]:  # checked before any model loads
        raise SystemExit(f"error: {run_dir} lacks {', '.join(missing)}: a run writes them when training finishes; "
                         f"finish it with `python -m kit train --out {run_dir} --resume` and its original options")
    md, html = write_report(run_dir, ensure_interpretation(run_dir))
    print(f"wrote {md} and {html}")


def _train(args) -> None:
    from kit import distributed
    from kit.presets import get_preset, run_dir
    config = get_preset(args.preset).override(args.set)
    points = None
    if args.sweep:
        from kit.sweep import parse_sweep, sweep_points
        grid = parse_sweep(args.sweep)
        out = args.out or run_dir(f"{config.name}-sweep")
        points = sweep_points(config, grid, out)  # every point's config is checked here, before anything loads
    if args.show_config:
        print(json.dumps(config.to_dict() if points is None else {p.name: p.config.to_dict() for p in points},
                         indent=2))
        return
    if args.dry_run:
        from kit.memory import print_plan
        print_plan(config, args.device or distributed.default_device(),
                   int(args.device_gib * 2**30) if args.device_gib else None,
                   points=None if points is None else [p.config for p in points])
        return
    distributed.init_from_env()
    if points is not None:
        from kit.sweep import run_sweep
        table = run_sweep(config, grid, out, resume=args.resume, device=args.device, report=not args.no_report)
        if table is not None:
            shown = [c for c in ("point", "status", "l0", "fvu", "ce_loss_recovered", "dead_frac") if c in table]
            print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
            print(f"sweep folder: {out} (sweep.csv, one run folder per point)", file=sys.stderr)
        return
    from kit.run import train_run
    out = args.out or run_dir(config.name)
    metrics = train_run(config, out, resume=args.resume, device=args.device, report=not args.no_report)
    if metrics is not None:
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(json.dumps(shown, indent=1))
        print(f"run folder: {out}", file=sys.stderr)
