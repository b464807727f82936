from __future__ import annotations

from dataclasses import dataclass, field

from .common_config import ICoTTrainingArguments


@dataclass
class StepwiseInternalizationConfig(ICoTTrainingArguments):
    """Stepwise internalization (ICoT-SI, Deng, Choi & Shieber 2024): train on the explicit
    view while removing chain-of-thought tokens from its start on a schedule, until the
    model answers with no chain of thought."""

    output_dir: str = field(default="outputs/stepwise", metadata={"help": "Where checkpoints and the final model go."})
    remove_per_stage: int = field(default=8, metadata={"help": "CoT tokens removed at each schedule stage."})
    removal_unit: str = field(default="epoch", metadata={"help": "What a schedule stage is: 'epoch' or 'steps'."})
    removal_interval_steps: int = field(default=1000, metadata={"help": "Optimizer steps per stage when removal_unit='steps'."})
    removal_start_stage: int = field(
        default=0,
        metadata={"help": "Schedule stage at step 0. 0 trains the first stage on the full CoT (the paper, from a base model); "
                  "1 starts removing at once, for a model that already writes the CoT well (our teacher)."},
    )
    removal_smoothing_lambda: float = field(
        default=4.0,
        metadata={"help": "Removal smoothing: each example removes o extra tokens with P(o) ~ exp(-lambda * o); 0 or less turns it off."},
    )
    max_removal_offset: int = field(default=8, metadata={"help": "Largest smoothing offset o."})
    reset_optimizer: bool = field(default=True, metadata={"help": "Clear the optimizer state whenever the schedule advances."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget for exact-match eval."})

    def __post_init__(self):
        super().__post_init__()
        if self.remove_per_stage < 1:
            raise ValueError(f"remove_per_stage must be >= 1, got {self.remove_per_stage}")
        if self.removal_unit not in ("epoch", "steps"):
            raise ValueError(f"removal_unit must be 'epoch' or 'steps', got {self.removal_unit!r}")
        if self.removal_interval_steps < 1:
            raise ValueError(f"removal_interval_steps must be >= 1, got {self.removal_interval_steps}")
        if self.removal_start_stage < 0:
            raise ValueError(f"removal_start_stage must be >= 0, got {self.removal_start_stage}")
        if self.max_removal_offset < 0:
            raise ValueError(f"max_removal_offset must be >= 0, got {self.max_removal_offset}")
