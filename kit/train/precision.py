"""Mixed precision of the transcoder step: whether bf16 autocast is on, why, and the context that applies it.

Under autocast the encoder's matmul (and a dense decoder's) runs in bf16 while the parameters, their gradients and
Adam's state stay float32: fp32 master weights (Micikevicius et al. 2018, "Mixed Precision Training"; bf16 keeps
fp32's exponent range, so no loss scaling is needed). The MSE and AuxK sums stay float32 (`kit.model.loss`), and
so does the sparse decoder (`kit.model.transcoder.Transcoder.decode_sparse`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""The CPU flags (as /proc/cpuinfo spells them) of bf16 matmul instructions."""


class Precision(NamedTuple):
    """The transcoder step's precision and the reason it was chosen."""

    bf16: bool
    reason: str

    def describe(self) -> str:
        """The run log's line, e.g. 'transcoder step: bf16 autocast (CPU has amx_bf16)'."""
        return f"transcoder step: {'bf16 autocast' if self.bf16 else 'float32'} ({self.reason})"


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bf16 flags of `BF16_FLAGS` this CPU reports; () where `cpuinfo` cannot be read (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):  # every core lists the same flags: the first line is enough
            flags.update(line.partition(":")[2].split())
            break
    return tuple(f for f in BF16_FLAGS if f in flags)


def choose(setting: str, device, param_dtype: torch.dtype = torch.float32,
           cpuinfo: str | Path = "/proc/cpuinfo") -> Precision:
    """The step's precision for `train.autocast` = `setting` ('auto', 'on', 'off') on `device`.

    'auto' is on for CUDA (where the card has bf16) and for a CPU with amx_bf16. A CPU with avx512_bf16 but no
    AMX stays float32: there oneDNN's bf16 matmuls at the step's shapes ran 1.3-1.9x slower than MKL's float32
    ones (BENCHMARKS.md, "Mixed precision").
    """
    device = torch.device(device)
    if param_dtype != torch.float32:
        return Precision(False, f"parameters are {str(param_dtype).removeprefix('torch.')}: autocast needs "
                                "float32 master weights")
    if setting in ("on", "off"):
        return Precision(setting == "on", f"train.autocast={setting}")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return Precision(ok, "CUDA" if ok else "this CUDA card has no bf16")
    if device.type != "cpu":
        return Precision(False, f"auto is off on {device.type}")
    flags = cpu_bf16_flags(cpuinfo)
    if "amx_bf16" in flags:
        return Precision(True, "CPU has amx_bf16")
    if flags:
        return Precision(False, "CPU has avx512_bf16 but no amx_bf16: bf16 matmuls are slower than float32 there")
    return Precision(False, "CPU has no bf16 matmul instructions")


def autocast(precision: Precision, device):
    """A context that runs its forward under bf16 autocast when `precision.bf16`, else changes nothing."""
    if not precision.bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
