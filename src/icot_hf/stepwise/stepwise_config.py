from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.common_config import ICoTTrainingArguments, document_fields

SCHEDULES = ("fixed", "reference", "gated")
GATE_METRICS = ("sequence_accuracy", "token_accuracy")
GRANULARITIES = ("tokens", "steps")


@document_fields("""
    >>> from icot_hf import StepwiseInternalizationConfig, StepwiseInternalizationTrainer
    >>> args = StepwiseInternalizationConfig(output_dir="stepwise", removal_schedule="gated", keep_positions=True, remove_per_stage=2,
    ...                                      gate_metric="sequence_accuracy", save_frontier_points=True, eval_strategy="steps")
    >>> StepwiseInternalizationTrainer(model="teacher", args=args, train_dataset=raw, eval_dataset=raw_valid).train()
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class StepwiseInternalizationConfig(ICoTTrainingArguments):
    """Stepwise internalization (ICoT-SI, Deng, Choi & Shieber 2024): train on the explicit
    view while removing chain-of-thought tokens from its start on a schedule, until the
    model answers with no chain of thought.

    Three schedules:
    - `fixed`: stage = removal_start_stage + step // removal_interval_steps (or + epoch).
    - `reference`: the released code's counter: one stage every removal_interval_steps steps
      (its `steps_per_removed_token`), the first at step removal_interval_steps (0-based).
    - `gated`: the next stage starts when the current one passes a gate measured on
      validation data (teacher-forced, at the current removal), or after max_stage_steps.
    In every schedule the optimizer is reset when the stage changes (reset_optimizer) unless
    the previous batch already had its whole chain of thought removed, as in the released code."""

    output_dir: str = field(default="outputs/stepwise", metadata={"help": "Where checkpoints and the final model go."})
    removal_schedule: str = field(default="fixed", metadata={"help": f"How stages advance: one of {SCHEDULES}."})
    remove_per_stage: int = field(default=8, metadata={"help": "CoT tokens (or steps) removed at each schedule stage (the reference: 1 token)."})
    removal_granularity: str = field(
        default="tokens",
        metadata={"help": "What a stage removes: 'tokens' (the paper and its released code) or whole reasoning 'steps' (icot_hf.data."
                  "split_steps: GSM8K's <<...>>, multiplication's partial products split at ' + '); remove_per_stage, the smoothing "
                  "offsets and max_removal_offset then count steps. Needs a fast tokenizer (character offsets)."},
    )
    removal_unit: str = field(default="epoch", metadata={"help": "fixed schedule: what a stage is, 'epoch' or 'steps'."})
    removal_interval_steps: int = field(
        default=1000, metadata={"help": "fixed/steps: optimizer steps per stage; reference: its steps_per_removed_token (4x4: 3156)."}
    )
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
    reset_optimizer: bool = field(default=True, metadata={"help": "Clear the optimizer state whenever the stage advances while CoT remains."})
    keep_positions: bool = field(
        default=False,
        metadata={"help": "Tokens after the removed span keep their original position ids (the reference's --keep_position): "
                  "removal no longer moves what is left, so a model need not relearn every position at each stage. The "
                  "final model then answers with its separator's position id shifted by the CoT length (saved in its config "
                  "as icot_position_gap, which icot_hf's generation reads)."},
    )
    gate_metric: str = field(
        default="sequence_accuracy",
        metadata={"help": "gated: 'sequence_accuracy' (share of validation examples whose whole remaining CoT and answer are "
                  "predicted right, teacher-forced) or 'token_accuracy' (share of those tokens)."},
    )
    gate_threshold: float = field(default=0.9, metadata={"help": "gated: advance when the gate metric reaches this."})
    gate_every_steps: int = field(default=50, metadata={"help": "gated: steps between gate checks within a stage."})
    gate_samples: int = field(default=256, metadata={"help": "gated: validation examples the gate reads (the first N of the eval set)."})
    max_stage_steps: int = field(default=2000, metadata={"help": "gated: a stage that has not passed after this many steps advances anyway."})
    keep_best_fully_removed: bool = field(
        default=True,
        metadata={"help": "Keep the evaluation with the best validation exact match among those with the CoT fully removed, "
                  "and end training with that model (the reference keeps its best epoch); a tie goes to the lower validation loss."},
    )
    save_frontier_points: bool = field(
        default=False,
        metadata={"help": "gated: save the model at the end of every removal stage (gate passed or cap hit) under "
                  "<output_dir>/frontier/removed-NNN, with the position gap it answers with, and list the points of this run "
                  "in frontier/index.json: models that still write part of their chain of thought, each a point on the "
                  "accuracy-against-CoT-length frontier (recipes/evaluate_models.py --frontier_dir evaluates them)."},
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget for exact-match eval."})

    def __post_init__(self):
        super().__post_init__()
        if self.removal_schedule not in SCHEDULES:
            raise ValueError(f"removal_schedule must be one of {SCHEDULES}, got {self.removal_schedule!r}")
        if self.remove_per_stage < 1:
            raise ValueError(f"remove_per_stage must be >= 1, got {self.remove_per_stage}")
        if self.removal_granularity not in GRANULARITIES:
            raise ValueError(f"removal_granularity must be one of {GRANULARITIES}, got {self.removal_granularity!r}")
        if self.removal_unit not in ("epoch", "steps"):
            raise ValueError(f"removal_unit must be 'epoch' or 'steps', got {self.removal_unit!r}")
        if self.removal_interval_steps < 1:
            raise ValueError(f"removal_interval_steps must be >= 1, got {self.removal_interval_steps}")
        if self.removal_start_stage < 0:
            raise ValueError(f"removal_start_stage must be >= 0, got {self.removal_start_stage}")
        if self.max_removal_offset < 0:
            raise ValueError(f"max_removal_offset must be >= 0, got {self.max_removal_offset}")
        if self.gate_metric not in GATE_METRICS:
            raise ValueError(f"gate_metric must be one of {GATE_METRICS}, got {self.gate_metric!r}")
        if not 0.0 < self.gate_threshold <= 1.0:
            raise ValueError(f"gate_threshold must be in (0, 1], got {self.gate_threshold}")
        if self.save_frontier_points and self.removal_schedule != "gated":
            raise ValueError("save_frontier_points saves a model at each gated stage's end: set removal_schedule: gated")
        for name in ("gate_every_steps", "gate_samples", "max_stage_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_best_fully_removed and self.eval_strategy != "no" and self.eval_exact_match_samples == 0:
            raise ValueError("keep_best_fully_removed chooses by validation exact match: set eval_exact_match_samples > 0 "
                             "(e.g. 256), or keep_best_fully_removed: false")
