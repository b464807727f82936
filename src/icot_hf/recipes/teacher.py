"""Train the explicit-CoT teacher (or, with `view: implicit`, the no-CoT baseline).

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/teacher.py --config recipes/configs/4x4_mult/teacher.yaml
"""

import logging

from transformers import set_seed

from icot_hf.recipe_utils import (
    ScriptArguments, begin_run, record_sequence_format, train_and_save, build_base_model, collator_for, context_length_of, load_splits,
    load_tokenizer, parse_args,
)
from icot_hf.tokenization import separator_token_id
from icot_hf.trainers import TeacherConfig, TeacherTrainer


def main():
    script_args, training_args = parse_args(ScriptArguments, TeacherConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if not begin_run(script_args, training_args):  # finished with these settings: nothing to do
        return
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(script_args)
    model = build_base_model(script_args, tokenizer)
    record_sequence_format(model, script_args)
    views = ("explicit", "implicit") if training_args.view == "explicit" else ("implicit",)
    train, evaluation = load_splits(script_args, tokenizer, views, context_length_of(model))
    trainer = TeacherTrainer(
        model=model,
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
