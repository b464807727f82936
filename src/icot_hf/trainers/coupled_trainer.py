"""Couple and optimize: emulator + student trained end to end on the answer alone."""

from __future__ import annotations

from ..teacher import cut_after_separators
from .base import ICoTTrainer, disable_dropout
from .coupled_config import CoupledConfig
from .teacher_trainer import implicit_prompts


class CoupledTrainer(ICoTTrainer):
    """Trains an `ImplicitCoTForCausalLM` with the answer cross-entropy on the implicit view.

    With `fix_emulator`, the emulator is frozen (eval mode, no gradients) and only the
    student learns. The saved checkpoint is the full inference artifact.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("args") is not None and not isinstance(kwargs["args"], CoupledConfig):
            raise TypeError("CoupledTrainer expects args=CoupledConfig(...)")
        model = kwargs.get("model")
        if model is not None and kwargs.get("args") is not None and kwargs["args"].fix_emulator:
            model.emulator.requires_grad_(False)
            disable_dropout(model.emulator)  # eval mode as the reference, and it stays so through Trainer's model.train()
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.causal_lm_loss(
            model, inputs["implicit_labels"],
            input_ids=inputs["implicit_input_ids"],
            attention_mask=inputs["implicit_attention_mask"],
            separator_positions=inputs["implicit_separators"][:, 0],
            softmax_temperature=self.args.softmax_temperature,
        )
        return (loss, outputs) if return_outputs else loss

    def answer_batch(self, model, batch):
        separator = model.config.separator_token_id
        prompts, mask = implicit_prompts(batch, separator)
        generated = model.generate(prompts, attention_mask=mask, max_new_tokens=self.args.max_new_tokens)
        return cut_after_separators(generated[:, prompts.shape[1] :], separator, 1)
