"""Thought emulation: learn to predict the frozen teacher's states from the question alone."""

from __future__ import annotations

from .base import FrozenTeacherMixin, ICoTTrainer
from .emulator_config import ThoughtEmulationConfig


class ThoughtEmulationTrainer(FrozenTeacherMixin, ICoTTrainer):
    """Trains an `ImplicitCoTEmulator` with sum_l ||f_l - teacher_l||^2 / 2 (batch mean).

    Logs the per-layer squared error (`mse_layer_<l>`) next to the loss.
    """

    def __init__(self, *args, teacher=None, **kwargs):
        if teacher is None:
            raise ValueError("ThoughtEmulationTrainer needs teacher=<a trained explicit-CoT causal LM>")
        if kwargs.get("args") is not None and not isinstance(kwargs["args"], ThoughtEmulationConfig):
            raise TypeError("ThoughtEmulationTrainer expects args=ThoughtEmulationConfig(...)")
        super().__init__(*args, **kwargs)
        self.attach_teacher(teacher, "emulator")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(
            input_ids=inputs["implicit_input_ids"],
            attention_mask=inputs["implicit_attention_mask"],
            separator_positions=inputs["implicit_separators"][:, 0],
            teacher_states=self.teacher_states(inputs),
            softmax_temperature=self.args.softmax_temperature,
        )
        self.record(**{f"mse_layer_{i}": v for i, v in enumerate(outputs.per_layer_mse)})
        return (outputs.loss, outputs) if return_outputs else outputs.loss
