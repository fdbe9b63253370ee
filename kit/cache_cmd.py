"""`python -m kit cache`: write a preset's training activations to disk, to train from them without the model.

Kept apart from `kit.cli` so the command line only names it; `kit.lm.cache_writer` does the work.
"""
from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from pathlib import Path

CACHE_HELP = """Write the training activations a run of this preset would compute (its store's refills, in order) to
a folder of safetensors shards and a manifest.json; then train from it with --set cache=FOLDER, without running
the language model (evaluation and the final pass still load it, after training). A killed write resumes when
the same command runs again.

examples:
  python -m kit cache --preset cpu --tokens 1.6M --out cache/cpu
  python -m kit cache --preset cpu --tokens 1.6M --out cache/cpu-bf16 --dtype bfloat16
  python -m kit train --preset cpu --set cache=cache/cpu --out runs/cpu-cached
  torchrun --nproc_per_node 8 -m kit cache --preset gemma-2-2b-l8 --tokens 246M --out cache/gemma
"""
_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def token_count(text: str) -> int:
    """A positive token count: 1600000, 1_600_000, 1.6M or 200k."""
    raw = text.strip().lower().replace(",", "").replace("_", "")
    scale = _SUFFIXES.get(raw[-1:], 1)
    try:
        value = Decimal(raw[:-1] if scale > 1 else raw) * scale
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value < 1 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of tokens (e.g. 1600000, 1.6M, "
                                         "200k)")
    return int(value)


def add_cache_arguments(c: argparse.ArgumentParser) -> None:
    """The `cache` subcommand's options."""
    c.add_argument("--preset", default="smoke", help="preset name: smoke, cpu or gemma-2-2b-l8 (default smoke)")
    c.add_argument("--tokens", type=token_count, required=True,
                   help="training tokens to cache, all ranks together (a run needs train.steps x store.batch_size "
                        "per rank), e.g. 1.6M")
    c.add_argument("--out", type=Path, help="cache folder (default cache/<preset>)")
    c.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="storage dtype of the activations (default: the preset's store.dtype)")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, as for train (model, layer, source, store.*); repeatable")
    c.add_argument("--device", help="torch device of the model (default: this rank's CUDA device, else cpu)")


def cache_command(args) -> None:
    """Run `python -m kit cache` with parsed arguments; every check is done before the model loads."""
    from kit import distributed
    from kit.presets import get_preset
    config = get_preset(args.preset).override(args.set)
    if args.device:
        from kit.run import _check_device
        _check_device(args.device)
    distributed.init_from_env()
    from kit.lm.cache_writer import write_cache
    out = args.out or Path("cache") / config.name
    manifest = write_cache(config, out, args.tokens, args.dtype, device=args.device)
    if manifest is not None and distributed.rank_world()[0] == 0:
        sets = "".join(f" --set {s}" for s in args.set)
        print(f"train from it: python -m kit train --preset {args.preset}{sets} --set cache={out}")
