"""Coconut (Hao et al. 2024): from an explicit-CoT model, replace reasoning steps by continuous
thoughts, stage by stage (icot_hf.coconut: CoconutTrainer, CoconutConfig).

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/coconut.py --config recipes/configs/4x4_mult/coconut.yaml

The data are the same input/cot/answer datasets every method reads; the CoT is cut into steps
(icot_hf.coconut.data.split_steps). The saved folder is a CoconutForCausalLM.
"""

import logging

from transformers import set_seed

from icot_hf.coconut.coconut_config import CoconutConfig
from icot_hf.coconut.coconut_trainer import CoconutTrainer
from icot_hf.recipe_utils import ScriptArguments, begin_run, build_base_model, load_tokenizer, parse_args, raw_splits, train_and_save

RAW = ("input", "cot", "answer", "question", "steps")  # the raw columns its trainer reads


def main():
    script_args, training_args = parse_args(ScriptArguments, CoconutConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if not begin_run(script_args, training_args):  # finished with these settings: nothing to do
        return
    set_seed(training_args.seed)
    start = script_args.teacher_name_or_path or script_args.model_name_or_path
    tokenizer = load_tokenizer(script_args, fallback_path=start)
    model = start if start else build_base_model(script_args, tokenizer)
    train, evaluation = raw_splits(script_args, RAW)
    trainer = CoconutTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer)
    train_and_save(trainer, training_args)


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
