from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.common_config import ICoTTrainingArguments, TeacherStatesArguments, check_delta_and_subset, document_fields


@document_fields("""
    >>> from icot_hf import ThoughtEmulationConfig, ThoughtEmulationTrainer
    >>> args = ThoughtEmulationConfig(output_dir="emulator", delta="dynamic", subset="diagonal")
    >>> ThoughtEmulationTrainer(model="gpt2", teacher_model="teacher", args=args, train_dataset=raw).train()
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class ThoughtEmulationConfig(TeacherStatesArguments, ICoTTrainingArguments):
    """Thought emulator: predict the frozen teacher's states from the question alone
    (loss sum_l ||f_l - teacher_l||^2 / 2, batch mean)."""

    output_dir: str = field(default="outputs/emulator", metadata={"help": "Where checkpoints and the final emulator go."})
    mixture_size: int = field(default=1, metadata={"help": "Vectors in the emulator's mixture table (1: a single learned vector)."})
    softmax_temperature: float = field(default=0.05, metadata={"help": "Temperature of the mixture softmax."})

    def __post_init__(self):
        super().__post_init__()
        self.delta = check_delta_and_subset(self.delta, self.subset)
        if self.mixture_size < 1:
            raise ValueError(f"mixture_size must be >= 1, got {self.mixture_size}")
        if self.softmax_temperature <= 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature}")
        if self.eval_exact_match_samples:
            raise ValueError("eval_exact_match_samples: the emulator predicts the teacher's states, not answers, so it has no "
                             "exact match; remove the field (the coupled stage measures the emulator's answers)")
