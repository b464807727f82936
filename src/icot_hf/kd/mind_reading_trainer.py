"""Mind-reading student: reads the frozen teacher's states, answers with no chain of thought."""

from __future__ import annotations

from ..generation import cut_after_separators
from ..trainers.base import FrozenTeacherMixin, ICoTTrainer
from .mind_reading_config import MindReadingConfig
from ..trainers.teacher_trainer import implicit_prompts


class MindReadingTrainer(FrozenTeacherMixin, ICoTTrainer):
    """Trains an `ImplicitCoTStudent` with the answer cross-entropy on the implicit view.

    Each step runs the frozen teacher on the explicit view of the same examples and
    hands its states (pattern `args.subset`, step `args.delta`) to the student. The
    teacher lives on the trainer, never inside the student's checkpoint.

    Args:
        model: an `ImplicitCoTStudent`, a plain causal LM to wrap (its state MLPs sized for
            the teacher), or a Hub id or folder of either (loaded with `model_init_kwargs`).
        teacher_model: the trained explicit-CoT teacher, or its Hub id or folder (loaded with
            `teacher_model_init_kwargs`); `teacher=` is accepted too.
        args: a `MindReadingConfig`; None for its defaults.
        train_dataset, eval_dataset, processing_class, separator_id, peft_config: as `TeacherTrainer`.

    Example:
        >>> trainer = MindReadingTrainer(model="gpt2", teacher_model="outputs/teacher", train_dataset=raw_train,
        ...                              peft_config=LoraConfig(r=8, target_modules=["c_attn"]))
        >>> trainer.train()
    """

    config_class = MindReadingConfig
    stage_name = "mind-reading"
    card_stage = "student"

    def __init__(self, *args, teacher_model=None, teacher_model_init_kwargs: dict | None = None, teacher=None, **kwargs):
        self.take_teacher(teacher_model, teacher, teacher_model_init_kwargs)
        super().__init__(*args, **kwargs)
        self.attach_teacher(self.frozen_teacher, "student")

    def build_model(self, model, init_kwargs, training_args):
        """An `ImplicitCoTStudent` as given or saved; a plain causal LM (or its name) is wrapped,
        its state MLPs sized for the teacher's states."""
        from .modeling_icot import ImplicitCoTStudent
        from ..trainers.common_config import parse_teacher_layers
        from ..trainers.inputs import is_name, load_causal_lm, saved_model_type

        if isinstance(model, ImplicitCoTStudent):
            return model
        if is_name(model) and saved_model_type(model) == "icot_student":
            return ImplicitCoTStudent.from_pretrained(str(model), **(init_kwargs or {}))
        return ImplicitCoTStudent.from_base_model(load_causal_lm(model, init_kwargs, "model"), **self.teacher_shape(),
                                                  teacher_layers=parse_teacher_layers(training_args.teacher_layers))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.causal_lm_loss(
            model, inputs["implicit_labels"],
            input_ids=inputs["implicit_input_ids"],
            teacher_states=self.teacher_states(inputs),
            attention_mask=inputs["implicit_attention_mask"],
            separator_positions=inputs["implicit_separators"][:, 0],
        )
        return (loss, outputs) if return_outputs else loss

    def answer_batch(self, model, batch):
        prompts, mask = implicit_prompts(batch, self.separator_id)
        generated = model.generate(
            prompts, self.teacher_states(batch), attention_mask=mask,
            max_new_tokens=self.args.max_new_tokens, do_sample=False, eos_token_id=self.separator_id,
            pad_token_id=self.processing_class.pad_token_id or self.separator_id,
        )
        return cut_after_separators(generated[:, prompts.shape[1] :], self.separator_id, 1)
