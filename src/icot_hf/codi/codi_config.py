from __future__ import annotations

from dataclasses import dataclass, field

from ..trainers.common_config import ICoTTrainingArguments, document_fields
from .modeling_codi import DISTILL_LOSSES


@document_fields("""
    >>> from icot_hf import CODIConfig, CODITrainer
    >>> args = CODIConfig(output_dir="codi", num_latent=6, use_peft=True, lora_r=128, lora_alpha=32, lora_dropout=0.1,
    ...                   lora_target_modules="c_attn,c_proj,c_fc", num_train_epochs=40)
    >>> CODITrainer(model="gpt2", args=args, train_dataset=gsm8k_aug).train()
""", stop_at=(ICoTTrainingArguments,))
@dataclass
class CODIConfig(ICoTTrainingArguments):
    """CODI's self-distillation (Shen et al. 2025; the released train.py and src/model.py): one model is its
    own teacher on `question CoT answer` and, as the student, answers after `num_latent` continuous
    thoughts; the loss is the student's answer cross-entropy + `distill_loss_factor` x the distance between
    its hidden states and the teacher's (detached) at the token before the answer, at every layer +
    `ref_loss_factor` x the teacher's cross-entropy. The defaults are the released GPT-2 GSM8k-Aug
    script's (train_gpt2_gsm8k-aug.sh): lr 3e-3, weight decay 0.1, 3% warm-up then cosine, gradient
    norm clipped at 2, the projection with LayerNorm, the distance divided by the teacher's std,
    `remove_eos`; its LoRA (r 128, alpha 32, dropout 0.1 on c_attn, c_proj, c_fc) is `use_peft` with
    those lora_* fields (gsm8k/paper/codi.yaml). Where the script's own defaults differ (remove_eos,
    distill_loss_div_std, use_prj off), the field's help says so."""

    output_dir: str = field(default="outputs/codi", metadata={"help": "Where checkpoints and the final model go."})
    num_latent: int = field(default=6, metadata={"help": "Continuous thoughts before the answer (released GSM8K presets: 6)."})
    use_prj: bool = field(default=True, metadata={"help": "Feed thoughts back through the projection (script default: off; presets: on)."})
    prj_dim: int = field(default=0, metadata={"help": "Hidden width of the projection (0: the model's hidden size; GPT-2 preset: 768)."})
    prj_dropout: float = field(default=0.0, metadata={"help": "Dropout at the projection's input."})
    prj_no_ln: bool = field(default=False, metadata={"help": "Leave out the projection's final LayerNorm."})
    distill_loss_type: str = field(default="smooth_l1", metadata={"help": f"Distance between student and teacher states: one of {DISTILL_LOSSES}."})
    distill_loss_div_std: bool = field(
        default=True, metadata={"help": "Divide each layer's distance by the std of the teacher's states there (script default: off; presets: on)."})
    distill_loss_factor: float = field(default=1.0, metadata={"help": "Weight of the distillation loss."})
    ref_loss_factor: float = field(default=1.0, metadata={"help": "Weight of the teacher's own CoT cross-entropy."})
    fix_attn_mask: bool = field(
        default=False, metadata={"help": "The released flag (off in its presets): mask the question's padding for the answer's pass."})
    mask_padding: bool = field(
        default=False, metadata={"help": "Mask padding in every pass and number positions from each row's first token (not released; "
                                 "then a padded row trains exactly as it would alone)."})
    answer_prefix: str = field(default="The answer is: ", metadata={"help": "Text before the answer value (released: 'The answer is: ')."})
    include_last_cot: bool = field(default=False, metadata={"help": "Keep the CoT's last step (the released code drops it)."})
    skip_non_digit_answers: bool = field(default=True, metadata={"help": "Skip examples whose answer does not start with a digit, as released."})
    remove_eos: bool = field(default=True, metadata={"help": "No eos after the question and CoT nor after <|eot|> (script default: off; presets: on)."})
    max_token_num: int = field(default=1000, metadata={"help": "Skip examples with more tokens than this in question + CoT + answer (released: 1000)."})
    max_part_tokens: int = field(default=256, metadata={"help": "Cut the question, the CoT and the answer each to this many tokens (released: 256)."})
    distill_offset: int = field(
        default=-1, metadata={"help": "Tokens after the answer prefix's last token where the distillation reads the states (-1: as released, "
                              "1 for Llama and Qwen models, whose tokenizers put the space before the value in a token of its own, else 0)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget for exact-match evaluation (released: 256)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate (GPT-2 script: 3e-3)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, not on biases and norms (GPT-2 script: 0.1)."})
    warmup_steps: float = field(
        default=0.03, metadata={"help": "Steps warming the lr up; below 1, a share of all steps (GPT-2 script: warmup_ratio 0.03)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (GPT-2 script: cosine)."})
    max_grad_norm: float = field(default=2.0, metadata={"help": "Gradient clipping (GPT-2 script: 2.0)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (released: adamw_torch)."})

    def __post_init__(self):
        super().__post_init__()
        if self.num_latent < 1:
            raise ValueError(f"num_latent must be >= 1 (the answer is read after the last continuous thought), got {self.num_latent}")
        if self.distill_loss_type not in DISTILL_LOSSES:
            raise ValueError(f"distill_loss_type must be one of {DISTILL_LOSSES}, got {self.distill_loss_type!r}")
        if self.prj_dim < 0 or self.max_part_tokens < 1 or self.max_token_num < 1:
            raise ValueError("prj_dim must be >= 0 and max_part_tokens, max_token_num >= 1")
        if self.distill_offset < -1:
            raise ValueError(f"distill_offset must be >= 0 (or -1: as released), got {self.distill_offset}")
