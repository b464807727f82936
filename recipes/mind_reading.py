"""Train the mind-reading student: it answers from the frozen teacher's hidden states.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/mind_reading.py --config recipes/configs/4x4_mult/mind_reading.yaml
"""

import logging

from transformers import set_seed

from icot_hf import ImplicitCoTStudent
from icot_hf.recipe_utils import (
    ScriptArguments, train_and_save, build_distillation_base, collator_for, context_length_of, load_splits,
    load_teacher, load_tokenizer, parse_args,
)
from icot_hf.state_cache import attach_teacher_states
from icot_hf.tokenization import separator_token_id
from icot_hf.trainers import MindReadingConfig, MindReadingTrainer


def main():
    script_args, training_args = parse_args(ScriptArguments, MindReadingConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(script_args, fallback_path=script_args.teacher_name_or_path)
    teacher = load_teacher(script_args)
    student = ImplicitCoTStudent.from_base_model(
        build_distillation_base(script_args, tokenizer, teacher),
        teacher_num_layers=teacher.config.num_hidden_layers,
        teacher_hidden_size=teacher.config.hidden_size,
    )
    views = ("explicit", "implicit")
    train, evaluation = load_splits(script_args, tokenizer, views, context_length_of(teacher))
    if training_args.teacher_state_cache:  # the teacher runs once over the training split, not every step
        with training_args.main_process_first(desc="teacher-state cache"):  # rank 0 builds it, the others then read it
            train = attach_teacher_states(train, teacher.to(training_args.device), collator_for(tokenizer, views), training_args.delta,
                                          training_args.subset, training_args.teacher_state_cache, training_args.per_device_eval_batch_size)
    trainer = MindReadingTrainer(
        model=student,
        teacher=teacher,
        args=training_args,
        data_collator=collator_for(tokenizer, views),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        separator_id=separator_token_id(tokenizer, script_args.separator_token),
    )
    train_and_save(trainer, training_args)


if __name__ == "__main__":
    main()
