from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.common_config import ICoTTrainingArguments, TeacherStatesArguments, check_delta_and_subset, document_fields


@document_fields("""
    >>> from icot_hf import MindReadingConfig, MindReadingTrainer
    >>> args = MindReadingConfig(output_dir="student", delta="dynamic", subset="diagonal", learning_rate=5e-4)
    >>> MindReadingTrainer(model="gpt2", teacher_model="teacher", args=args, train_dataset=raw).train()
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class MindReadingConfig(TeacherStatesArguments, ICoTTrainingArguments):
    """Mind-reading student: answer cross-entropy on the implicit view, reading the frozen
    teacher's states (extracted on the explicit view) at the separator."""

    output_dir: str = field(default="outputs/mind_reading", metadata={"help": "Where checkpoints and the final student go."})
    max_new_tokens: int = field(default=64, metadata={"help": "Answer budget for exact-match eval."})

    def __post_init__(self):
        super().__post_init__()
        self.delta = check_delta_and_subset(self.delta, self.subset)
