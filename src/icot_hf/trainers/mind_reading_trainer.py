"""Mind-reading student: reads the frozen teacher's states, answers with no chain of thought."""

from __future__ import annotations

from ..teacher import cut_after_separators
from .base import FrozenTeacherMixin, ICoTTrainer
from .mind_reading_config import MindReadingConfig
from .teacher_trainer import implicit_prompts


class MindReadingTrainer(FrozenTeacherMixin, ICoTTrainer):
    """Trains an `ImplicitCoTStudent` with the answer cross-entropy on the implicit view.

    Each step runs the frozen `teacher` on the explicit view of the same examples and
    hands its states (pattern `args.subset`, step `args.delta`) to the student. The
    teacher lives on the trainer, never inside the student's checkpoint.
    """

    def __init__(self, *args, teacher=None, separator_id: int | None = None, **kwargs):
        if teacher is None:
            raise ValueError("MindReadingTrainer needs teacher=<a trained explicit-CoT causal LM>")
        if kwargs.get("args") is not None and not isinstance(kwargs["args"], MindReadingConfig):
            raise TypeError("MindReadingTrainer expects args=MindReadingConfig(...)")
        super().__init__(*args, **kwargs)
        self.attach_teacher(teacher, "student")
        self.separator_id = separator_id

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
