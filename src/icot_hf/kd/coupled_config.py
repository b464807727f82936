from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.common_config import ICoTTrainingArguments, document_fields


@document_fields("""
    >>> from icot_hf import CoupledConfig, CoupledTrainer
    >>> args = CoupledConfig(output_dir="coupled", learning_rate=5e-5)
    >>> CoupledTrainer(student_model="student", emulator_model="emulator", args=args, train_dataset=raw, processing_class=tokenizer).train()
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class CoupledConfig(ICoTTrainingArguments):
    """Couple and optimize: emulator predictions feed the student; both trained end to end
    with the answer cross-entropy only (no chain of thought needed)."""

    output_dir: str = field(default="outputs/coupled", metadata={"help": "Where checkpoints and the final ImplicitCoTForCausalLM go."})
    softmax_temperature: float = field(default=0.05, metadata={"help": "Temperature of the emulator's mixture softmax."})
    fix_emulator: bool = field(default=False, metadata={"help": "Freeze the emulator and train only the student."})
    max_new_tokens: int = field(default=64, metadata={"help": "Answer budget for exact-match eval."})

    def __post_init__(self):
        super().__post_init__()
        if self.softmax_temperature <= 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature}")
