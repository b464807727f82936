"""Couple and optimize: emulator predictions feed the student; both trained end to end on
the answer alone. Saves an `ImplicitCoTForCausalLM`, the inference artifact.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/couple.py --config recipes/configs/4x4_mult/couple.yaml
"""

import logging

from transformers import set_seed

from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.recipe_utils import (
    ScriptArguments, begin_run, record_sequence_format, train_and_save, collator_for, context_length_of, load_splits, distillation_tokenizer, parse_args,
)
from icot_hf.tokenization import separator_token_id
from icot_hf.kd import CoupledConfig, CoupledTrainer


def main():
    script_args, training_args = parse_args(ScriptArguments, CoupledConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if not begin_run(script_args, training_args):  # finished with these settings: nothing to do
        return
    set_seed(training_args.seed)
    if not (script_args.student_name_or_path and script_args.emulator_name_or_path):
        raise ValueError("couple.py needs student_name_or_path and emulator_name_or_path (the two earlier stages' outputs)")
    tokenizer = distillation_tokenizer(script_args, {"the student": script_args.student_name_or_path,
                                                     "the emulator": script_args.emulator_name_or_path})
    student = ImplicitCoTStudent.from_pretrained(script_args.student_name_or_path)
    emulator = ImplicitCoTEmulator.from_pretrained(script_args.emulator_name_or_path)
    emulator.config.softmax_temperature = training_args.softmax_temperature
    separator = separator_token_id(tokenizer, script_args.separator_token)
    model = ImplicitCoTForCausalLM.from_emulator_and_student(
        emulator, student, separator_token_id=separator,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator,
        max_answer_tokens=training_args.max_new_tokens,
    )
    record_sequence_format(model, script_args)
    views = ("implicit",)
    train, evaluation = load_splits(script_args, tokenizer, views, context_length_of(student))
    trainer = CoupledTrainer(
        model=model,
        args=training_args,
        data_collator=collator_for(tokenizer, views),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    train_and_save(trainer, training_args)


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
