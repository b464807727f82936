"""Whether to train in bf16 on this CPU: decided from what the CPU has, never assumed.

A CPU with AMX tiles or AVX-512 BF16 multiplies bf16 at several times its fp32 rate; one
without them emulates bf16 and is far slower than fp32 (measured on an AVX2-only AMD EPYC, one
thread, 1024 x 1024 matmul: 64 GFLOP/s fp32, 0.8 GFLOP/s bf16); on an AMD EPYC with avx512_bf16 a
whole training step of the CPU presets runs 1.2-1.5x faster in bf16 (results/stage_precision.md).
So `cpu_bf16: auto` turns the
Trainer's `bf16` on only where /proc/cpuinfo lists one of `BF16_FLAGS`; `true` forces it,
`false` (the default) keeps fp32. The choice is part of the run record and of the completion
marker (`precision`), so a run is never compared with or reused for one of the other precision.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")
CPU_BF16_CHOICES = ("auto", "true", "false")


def cpu_bf16_flags(cpuinfo: Path | None = None) -> list[str]:
    """The bf16 features this CPU lists (empty where it has none, or where /proc/cpuinfo is absent)."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [flag for flag in BF16_FLAGS if flag in flags]


def cpu_description(cpuinfo: Path | None = None) -> str:
    """The CPU's model name and its bf16 instructions, for results and benchmarks."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        text = ""
    model = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "CPU")
    return f"{model} (bf16 instructions: {', '.join(cpu_bf16_flags(cpuinfo)) or 'none'})"


def use_cpu_bf16(choice: str) -> bool:
    """Resolve `cpu_bf16` (auto / true / false) for a run on the CPU."""
    choice = str(choice).lower()
    if choice not in CPU_BF16_CHOICES:
        raise ValueError(f"cpu_bf16 must be one of {CPU_BF16_CHOICES}, got {choice!r}")
    if choice == "auto":
        flags = cpu_bf16_flags()
        logger.info("cpu_bf16 auto: %s", f"bf16 ({', '.join(flags)})" if flags else "fp32 (no amx_bf16 or avx512_bf16 on this CPU)")
        return bool(flags)
    return choice == "true"


def precision_of(training_args) -> str:
    """The precision a run trains in, for its marker and results."""
    return "bf16" if getattr(training_args, "bf16", False) else "fp16" if getattr(training_args, "fp16", False) else "fp32"
