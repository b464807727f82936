from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.common_config import ICoTTrainingArguments, document_fields

OPTIMIZER_RESETS = ("epoch", "stage", "never")


@document_fields("""
    >>> from icot_hf import CoconutConfig, CoconutTrainer
    >>> args = CoconutConfig(output_dir="coconut", c_thought=2, epochs_per_stage=3, max_latent_stage=3, num_train_epochs=25)
    >>> CoconutTrainer(model="outputs/gsm8k/cot", args=args, train_dataset=raw, eval_dataset=raw_valid).train()
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class CoconutConfig(ICoTTrainingArguments):
    """Coconut's curriculum (Hao et al. 2024; the released run.py and dataset.py): at stage
    k = (start_epoch + epoch) // epochs_per_stage the first k reasoning steps of every problem are
    replaced by k x c_thought latent thoughts between `<|start-latent|>` and `<|end-latent|>`;
    past max_latent_stage every step goes. The dataset is rebuilt at each epoch. Defaults are the
    released code's: AdamW on every parameter with weight decay 0.01, constant lr 1e-4, no gradient
    clipping, dropout as the model has it, the optimizer re-created at every epoch."""

    output_dir: str = field(default="outputs/coconut", metadata={"help": "Where checkpoints and the final model go."})
    c_thought: int = field(default=2, metadata={"help": "Latent thoughts per replaced reasoning step (GSM8K preset: 2)."})
    epochs_per_stage: int = field(default=3, metadata={"help": "Epochs of each curriculum stage (GSM8K preset: 3)."})
    max_latent_stage: int = field(default=3, metadata={"help": "Most steps replaced by latents; later stages drop every step."})
    pad_latent_to_max: bool = field(
        default=True, metadata={"help": "Past max_latent_stage, keep max_latent_stage x c_thought latents even for problems with fewer steps."})
    uniform_prob: float = field(
        default=0.0, metadata={"help": "Probability that an example trains at a random stage (0..its step count) instead of the scheduled one."})
    start_epoch: int = field(
        default=0, metadata={"help": "Curriculum epoch of the first epoch (the released `resume`: 3 starts GSM8K at stage 1, from a CoT model)."})
    reset_optimizer: str = field(
        default="epoch", metadata={"help": f"When the optimizer state is cleared: one of {OPTIMIZER_RESETS} (the released code: every epoch)."})
    latent_init_token: str = field(
        default="<<", metadata={"help": "Token whose embedding (and output row) the new tokens start from (the released code: GSM8K's '<<')."})
    question_suffix: str = field(default="\n", metadata={"help": "Text after the question (released: a newline)."})
    step_suffix: str = field(default="\n", metadata={"help": "Text after each reasoning step (released: a newline)."})
    answer_prefix: str = field(default="### ", metadata={"help": "Text before the answer (released: '### ')."})
    max_new_tokens: int = field(default=64, metadata={"help": "Generation budget for exact-match evaluation (released: 64 on GSM8K)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (released: 1e-4)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (released: 0.01, on every parameter)."})
    weight_decay_all_parameters: bool = field(
        default=True, metadata={"help": "Decay LayerNorms and biases too, as the released torch AdamW over all parameters does."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping (released: none, 0)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (released: constant)."})
    disable_dropout: bool = field(default=False, metadata={"help": "Zero all dropout (the released code trains with the model's dropout on)."})

    def __post_init__(self):
        super().__post_init__()
        if self.c_thought < 1:
            raise ValueError(f"c_thought must be >= 1 (latent thoughts per reasoning step), got {self.c_thought}")
        if self.epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage must be >= 1, got {self.epochs_per_stage}")
        if self.max_latent_stage < 0 or self.start_epoch < 0:
            raise ValueError("max_latent_stage and start_epoch must be >= 0")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob is a probability, got {self.uniform_prob}")
        if self.reset_optimizer not in OPTIMIZER_RESETS:
            raise ValueError(f"reset_optimizer must be one of {OPTIMIZER_RESETS}, got {self.reset_optimizer!r}")

    @property
    def num_latent_thoughts(self) -> int:
        """Latents a fully trained model's prompt carries."""
        return self.max_latent_stage * self.c_thought
