from __future__ import annotations

from dataclasses import dataclass, field

from .common_config import ICoTTrainingArguments, document_fields


@document_fields("""
    >>> from icot_hf import TeacherConfig, TeacherTrainer
    >>> args = TeacherConfig(output_dir="teacher", max_steps=2000, learning_rate=1e-3, per_device_train_batch_size=64)
    >>> TeacherTrainer(model="gpt2", args=args, train_dataset=raw, processing_class=tokenizer).train()  # raw: input/cot/answer
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class TeacherConfig(ICoTTrainingArguments):
    """Explicit-CoT teacher training: next-token loss on `cot S answer S` after `input S`."""

    output_dir: str = field(default="outputs/teacher", metadata={"help": "Where checkpoints and the final teacher go."})
    view: str = field(
        default="explicit",
        metadata={"help": "'explicit' trains the CoT teacher; 'implicit' trains the no-CoT baseline on `input S answer S`."},
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget (chain of thought + answer) for exact-match eval."})

    def __post_init__(self):
        super().__post_init__()
        if self.view not in ("explicit", "implicit"):
            raise ValueError(f"view must be 'explicit' (CoT teacher) or 'implicit' (no-CoT baseline), got {self.view!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
