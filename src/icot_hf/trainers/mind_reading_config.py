from __future__ import annotations

from dataclasses import dataclass, field

from .common_config import ICoTTrainingArguments, TeacherStatesArguments, check_delta_and_subset


@dataclass
class MindReadingConfig(TeacherStatesArguments, ICoTTrainingArguments):
    """Mind-reading student: answer cross-entropy on the implicit view, reading the frozen
    teacher's states (extracted on the explicit view) at the separator."""

    output_dir: str = field(default="outputs/mind_reading", metadata={"help": "Where checkpoints and the final student go."})
    max_new_tokens: int = field(default=64, metadata={"help": "Answer budget for exact-match eval."})

    def __post_init__(self):
        super().__post_init__()
        self.delta = check_delta_and_subset(self.delta, self.subset)
