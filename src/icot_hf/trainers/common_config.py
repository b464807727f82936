"""Fields every ICoT stage shares, on top of `transformers.TrainingArguments`.

Defaults follow the paper's released code where it has one (AdamW, lr 5e-5, gradient
clipping 1.0, dropout off) and the library's needs elsewhere (our collators read raw
columns, so `remove_unused_columns=False`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import TrainingArguments


def document_fields(example: str, stop_at: tuple[type, ...] = (TrainingArguments,)):
    """Class decorator: append an `Args:` section, written from the fields' own help (so the
    docstring never disagrees with the parser's `--help`), and an `Example:` to a config's
    docstring. Lists the fields the class and its mixins declare, down to `stop_at`."""
    import textwrap

    def decorate(cls):
        names: list[str] = []
        for klass in cls.__mro__:
            if klass in stop_at or klass is object:
                break
            names += [name for name in vars(klass).get("__annotations__", {}) if name not in names]
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        lines = []
        for name in names:
            if name not in by_name:
                continue
            item = by_name[name]
            default = item.default if item.default is not dataclasses.MISSING else "required"
            text = f"{name} (`{item.type}`, default {default!r}): {item.metadata.get('help', '')}"
            lines += textwrap.wrap(text, 110, initial_indent=" " * 8, subsequent_indent=" " * 12)
        doc = (cls.__doc__ or "").rstrip()
        cls.__doc__ = f"{doc}\n\n    Args:\n" + "\n".join(lines) + "\n\n    Example:\n" + textwrap.indent(textwrap.dedent(example).strip(), " " * 8) + "\n"
        return cls

    return decorate


@document_fields("""
    >>> from icot_hf import TeacherConfig
    >>> TeacherConfig(output_dir="teacher", cpu_bf16="auto", eval_exact_match_samples=256)  # every stage's config takes these
""")
@dataclass
class ICoTTrainingArguments(TrainingArguments):
    """The fields every icot_hf stage config shares, on top of `transformers.TrainingArguments`
    (whose fields all work as usual)."""

    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate (paper: 5e-5)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (paper: 1.0)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the ICoT collators read raw view columns."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    report_to: str | None = field(default="none", metadata={"help": "Integrations to report to (tensorboard, wandb, ...)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Zero all dropout, as the paper's code trains the student, emulator and coupled model (in eval mode); "
                  "its teacher and ICoT-SI train with dropout on (disable_dropout: false in those paper presets)."},
    )
    eval_exact_match_samples: int = field(
        default=0, metadata={"help": "At each evaluation, generate answers for this many eval examples and log eval_exact_match (0: off)."}
    )
    label_logits_only: bool = field(
        default=True,
        metadata={"help": "Compute the output layer and the loss only at labelled positions, in chunks, never the full "
                  "(batch, length, vocab) logits (icot_hf.label_loss). Falls back to the model's own loss where the "
                  "logits are not a plain linear map of the last hidden state, and under DeepSpeed ZeRO-3."},
    )
    weight_decay_all_parameters: bool = field(
        default=False,
        metadata={"help": "Apply weight_decay to every parameter, biases and LayerNorm weights included, as the paper's code "
                  "does (it builds torch.optim.AdamW(model.parameters(), lr) with torch's default decay 0.01). The "
                  "Trainer's default (False) exempts biases and norm weights. The paper presets set it."},
    )
    cpu_bf16: str = field(
        default="false",
        metadata={"help": "bf16 mixed precision when training on the CPU: 'auto' where the CPU has amx_bf16 or avx512_bf16 "
                  "(elsewhere bf16 is emulated and far slower than fp32), 'true' always, 'false' never (icot_hf.precision). "
                  "On a GPU, use bf16 as usual."},
    )
    output_layer_precision: str = field(
        default="auto",
        metadata={"help": "Under bf16/fp16 mixed precision, the dtype of the output layer's matmuls in the label-position "
                  "loss, which runs after the autocast forward returns: 'compute' (the mixed-precision dtype, fp32 "
                  "accumulation; the log-sum-exp, loss and gradient sums stay fp32), 'fp32', or 'auto' ('compute' from "
                  "4,096 vocabulary tokens up, fp32 for the digit tokenizers, where the layer is a small share of a step)."},
    )
    generation_batch_size: int = field(default=64, metadata={"help": "Batch size of generation-based evaluation."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters on the base causal LM(s) instead of all their weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Modules to adapt: 'all-linear' or comma-separated names."})

    def __post_init__(self):
        from ..precision import use_cpu_bf16

        import torch

        on_cpu = self.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
        if on_cpu and not self.bf16 and use_cpu_bf16(self.cpu_bf16):
            # the Trainer accepts bf16 without a GPU only when told the run is on the CPU
            self.bf16, self.use_cpu = True, True
        super().__post_init__()
        from ..precision import checked_output_layer_precision

        checked_output_layer_precision(self.output_layer_precision)
        if self.eval_exact_match_samples < 0:
            raise ValueError(f"eval_exact_match_samples must be >= 0, got {self.eval_exact_match_samples}")
        if self.generation_batch_size < 1:
            raise ValueError(f"generation_batch_size must be >= 1, got {self.generation_batch_size}")
        if self.use_peft and self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")

    def lora_config(self):
        """The peft LoraConfig these fields describe (None when use_peft is off)."""
        if not self.use_peft:
            return None
        from peft import LoraConfig

        targets = self.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")


def check_delta_and_subset(delta: str, subset: str) -> str:
    from ..kd.teacher_states import PATTERNS, parse_delta

    try:
        parsed = parse_delta(delta)
    except ValueError as error:
        raise ValueError(f"delta: {error}. Example: --delta dynamic or --delta 2") from None
    if subset not in PATTERNS:
        raise ValueError(f"subset must be one of {PATTERNS} (which teacher states to distil), got {subset!r}")
    return str(parsed)


@dataclass
class TeacherStatesArguments:
    """Which teacher states a distillation stage reads (mixed into stage configs)."""

    delta: str = field(default="dynamic", metadata={"help": "Diagonal step: 'dynamic' ((s2 - s1) / (L - 1)) or a positive integer."})
    subset: str = field(
        default="diagonal",
        metadata={"help": "Teacher-state pattern: diagonal, first_column, last_column, top_row or bottom_row."},
    )
    teacher_layers: str | None = field(
        default=None,
        metadata={"help": "Teacher layer read by each student/emulator layer, comma-separated (YAML: a list), e.g. "
                  "'1,3,5,7' for a 4-layer student of an 8-layer teacher. Default: equal depths, layer i reads layer i."},
    )
    teacher_state_cache: str | None = field(
        default=None,
        metadata={"help": "Folder for the training examples' teacher states, extracted once (built on first use, reused "
                  "after; an error if it was built from another teacher, data or settings). Unset: run the teacher each step."},
    )


def parse_teacher_layers(value: str | None) -> list[int] | None:
    """'1,3,5,7' -> [1, 3, 5, 7]; None stays None."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return [int(part) for part in str(value).replace("[", "").replace("]", "").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"teacher_layers must be comma-separated layer indices such as '1,3,5,7', got {value!r}") from None
