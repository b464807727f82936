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


# `output_layer_precision: auto` runs the output layer in the compute dtype only from this vocabulary size up.
# Below it the layer is a small share of a step, and bf16 there changes a run's numbers for no speed. Measured
# (results/output_layer_precision.md, an 8 x 128 GPT-2 teacher, batch 32, 2 threads, avx512_bf16): at the digit
# tokenizer's 22 tokens the bf16 head ran 125 examples/s against 135 with it in fp32; at GPT-2's 50,257, 36.7
# against 27.4 (fp32 throughout: 26.1).
OUTPUT_LAYER_MIN_VOCAB = 4096
OUTPUT_LAYER_CHOICES = ("auto", "compute", "fp32")


def output_layer_dtype(training_args, vocab_size: int):
    """The dtype the label-position loss makes its logits in (icot_hf.label_loss), or None for the
    weights' own dtype (fp32 master weights: fp32). Under bf16/fp16 mixed precision the model's forward
    runs under autocast but that loss runs after it returns, so without this its matmul, the largest of a
    small model's step at a real vocabulary, would stay fp32. `output_layer_precision`: `compute`
    (the mixed-precision dtype), `fp32`, or `auto` (`compute` from OUTPUT_LAYER_MIN_VOCAB tokens up)."""
    import torch

    choice = checked_output_layer_precision(getattr(training_args, "output_layer_precision", "auto"))
    mixed = precision_of(training_args)
    if mixed == "fp32" or choice == "fp32" or (choice == "auto" and vocab_size < OUTPUT_LAYER_MIN_VOCAB):
        return None
    return torch.bfloat16 if mixed == "bf16" else torch.float16


def checked_output_layer_precision(choice) -> str:
    """`output_layer_precision`, lower-cased; a clear error for anything but OUTPUT_LAYER_CHOICES."""
    choice = str(choice).lower()
    if choice not in OUTPUT_LAYER_CHOICES:
        raise ValueError(f"output_layer_precision must be one of {OUTPUT_LAYER_CHOICES}, got {choice!r}")
    return choice
