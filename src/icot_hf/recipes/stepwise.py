"""Stepwise internalization (ICoT-SI): start from an explicit-CoT model and remove CoT
tokens on a schedule until it answers with no chain of thought.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/stepwise.py --config recipes/configs/4x4_mult/stepwise.yaml
"""

import logging

from transformers import AutoModelForCausalLM, set_seed

from icot_hf.recipe_utils import (
    ScriptArguments, begin_run, record_sequence_format, build_base_model, collator_for, context_length_of, load_splits, load_tokenizer, parse_args, train_and_save,
)
from icot_hf.tokenization import separator_token_id
from icot_hf.stepwise import StepwiseInternalizationConfig, StepwiseInternalizationTrainer


def main():
    script_args, training_args = parse_args(ScriptArguments, StepwiseInternalizationConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if not begin_run(script_args, training_args):  # finished with these settings: nothing to do
        return
    set_seed(training_args.seed)
    # Start from the explicit-CoT teacher when given, else from model_name_or_path / model_config.
    tokenizer = load_tokenizer(script_args, fallback_path=script_args.teacher_name_or_path)
    if script_args.teacher_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(script_args.teacher_name_or_path)
    else:
        model = build_base_model(script_args, tokenizer)
    record_sequence_format(model, script_args)
    views = ("explicit",)
    train, evaluation = load_splits(script_args, tokenizer, views, context_length_of(model), step_ends=training_args.removal_granularity == "steps")
    separator = separator_token_id(tokenizer, script_args.separator_token)
    trainer = StepwiseInternalizationTrainer(
        model=model,
        args=training_args,
        data_collator=collator_for(tokenizer, views),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        separator_id=separator,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator,
    )
    train_and_save(trainer, training_args)


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
