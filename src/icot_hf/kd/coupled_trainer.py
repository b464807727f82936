"""Couple and optimize: emulator + student trained end to end on the answer alone."""

from __future__ import annotations

from ..generation import cut_after_separators
from ..trainers.base import ICoTTrainer, disable_dropout
from .coupled_config import CoupledConfig
from ..trainers.inputs import is_name, named_arguments, resolve_tokenizer
from ..trainers.teacher_trainer import implicit_prompts


class CoupledTrainer(ICoTTrainer):
    """Trains an `ImplicitCoTForCausalLM` with the answer cross-entropy on the implicit view.

    With `fix_emulator`, the emulator is frozen (eval mode, no gradients) and only the
    student learns. The saved checkpoint is the full inference artifact.

    Args:
        model: an `ImplicitCoTForCausalLM` or its folder; or None, with `student_model` and
            `emulator_model` (a trained `ImplicitCoTStudent` and `ImplicitCoTEmulator`, or their folders).
        args: a `CoupledConfig`; None for its defaults.
        train_dataset, eval_dataset, processing_class, separator_id, peft_config: as `TeacherTrainer`.

    Example:
        >>> CoupledTrainer(student_model="outputs/mind_reading", emulator_model="outputs/emulator",
        ...                train_dataset=raw_train, processing_class=tokenizer).train()
    """

    config_class = CoupledConfig
    stage_name = "coupled"
    card_stage = "implicit"

    def __init__(self, *args, student_model=None, emulator_model=None, **kwargs):
        kwargs = named_arguments(args, kwargs)
        if kwargs.get("model") is None and student_model is not None and emulator_model is not None:
            kwargs["model"] = (student_model, emulator_model)
        elif kwargs.get("model") is None and (student_model is not None or emulator_model is not None):
            raise ValueError("CoupledTrainer composes its model from student_model and emulator_model: give both, or model=")
        if kwargs.get("processing_class") is None:
            kwargs["processing_class"] = resolve_tokenizer(None, student_model, emulator_model, kwargs.get("model"))
        super().__init__(**kwargs)

    def build_model(self, model, init_kwargs, training_args):
        """The coupled model as given or saved, or composed from (student, emulator)."""
        from .modeling_icot import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
        from ..tokenization import separator_token_id

        if isinstance(model, tuple):
            student, emulator = model
            student = ImplicitCoTStudent.from_pretrained(str(student)) if is_name(student) else student
            emulator = ImplicitCoTEmulator.from_pretrained(str(emulator)) if is_name(emulator) else emulator
            emulator.config.softmax_temperature = training_args.softmax_temperature
            tokenizer = self._tokenizer_for_build
            separator = separator_token_id(tokenizer)
            model = ImplicitCoTForCausalLM.from_emulator_and_student(
                emulator, student, separator_token_id=separator,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator,
                max_answer_tokens=training_args.max_new_tokens)
        elif is_name(model):
            model = ImplicitCoTForCausalLM.from_pretrained(str(model), **(init_kwargs or {}))
        if training_args.fix_emulator:
            model.emulator.requires_grad_(False)
            disable_dropout(model.emulator)  # eval mode as the reference, and it stays so through Trainer's model.train()
        return model

    def views(self, training_args):
        return ("implicit",)

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
