"""Train the mind-reading student: it answers from the frozen teacher's hidden states.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/mind_reading.py --config recipes/configs/4x4_mult/mind_reading.yaml
"""

import logging

from transformers import set_seed

from icot_hf import ImplicitCoTStudent
from icot_hf.recipe_utils import (
    ScriptArguments, begin_run, record_sequence_format, attach_state_cache, train_and_save, build_distillation_base, collator_for, context_length_of, load_splits,
    load_teacher, distillation_tokenizer, parse_args,
)
from icot_hf.tokenization import separator_token_id
from icot_hf.kd import MindReadingConfig, MindReadingTrainer
from icot_hf.trainers.common_config import parse_teacher_layers


def main():
    script_args, training_args = parse_args(ScriptArguments, MindReadingConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if not begin_run(script_args, training_args):  # finished with these settings: nothing to do
        return
    set_seed(training_args.seed)
    tokenizer = distillation_tokenizer(script_args, {"the teacher": script_args.teacher_name_or_path})
    teacher = load_teacher(script_args)
    student = ImplicitCoTStudent.from_base_model(
        build_distillation_base(script_args, tokenizer, teacher),
        teacher_num_layers=teacher.config.num_hidden_layers,
        teacher_hidden_size=teacher.config.hidden_size,
        teacher_layers=parse_teacher_layers(training_args.teacher_layers),
    )
    record_sequence_format(student, script_args)
    views = ("explicit", "implicit")
    train, evaluation = load_splits(script_args, tokenizer, views, context_length_of(teacher), reads_teacher_states=True)
    train = attach_state_cache(train, teacher, tokenizer, views, training_args, script_args)  # teacher_state_cache: extract once
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
    from icot_hf.cli import run

    run(main)
