"""Thought emulation: learn to predict the frozen teacher's states from the question alone."""

from __future__ import annotations

from ..trainers.base import FrozenTeacherMixin, ICoTTrainer
from .emulator_config import ThoughtEmulationConfig


class ThoughtEmulationTrainer(FrozenTeacherMixin, ICoTTrainer):
    """Trains an `ImplicitCoTEmulator` with sum_l ||f_l - teacher_l||^2 / 2 (batch mean).

    Logs the per-layer squared error (`mse_layer_<l>`) next to the loss.

    Args:
        model: an `ImplicitCoTEmulator`, a plain causal LM to wrap, or a Hub id or folder of either.
        teacher_model: the trained explicit-CoT teacher, or its Hub id or folder (`teacher=` too).
        args: a `ThoughtEmulationConfig`; None for its defaults.
        train_dataset, eval_dataset, processing_class, peft_config: as `TeacherTrainer`.

    Example:
        >>> ThoughtEmulationTrainer(model="gpt2", teacher_model="outputs/teacher", train_dataset=raw_train).train()
    """

    config_class = ThoughtEmulationConfig
    stage_name = "emulator"
    card_stage = "emulator"

    def __init__(self, *args, teacher_model=None, teacher_model_init_kwargs: dict | None = None, teacher=None, **kwargs):
        self.take_teacher(teacher_model, teacher, teacher_model_init_kwargs)
        super().__init__(*args, **kwargs)
        self.attach_teacher(self.frozen_teacher, "emulator")

    def build_model(self, model, init_kwargs, training_args):
        """An `ImplicitCoTEmulator` as given or saved; a plain causal LM (or its name) is wrapped
        for the teacher's states, with the config's mixture size and temperature."""
        from .modeling_icot import ImplicitCoTEmulator
        from ..trainers.common_config import parse_teacher_layers
        from ..trainers.inputs import is_name, load_causal_lm, saved_model_type

        if isinstance(model, ImplicitCoTEmulator):
            return model
        if is_name(model) and saved_model_type(model) == "icot_emulator":
            return ImplicitCoTEmulator.from_pretrained(str(model), **(init_kwargs or {}))
        return ImplicitCoTEmulator.from_base_model(load_causal_lm(model, init_kwargs, "model"), **self.teacher_shape(),
                                                   teacher_layers=parse_teacher_layers(training_args.teacher_layers),
                                                   mixture_size=training_args.mixture_size,
                                                   softmax_temperature=training_args.softmax_temperature)

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
