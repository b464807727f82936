"""CODI (Shen et al. 2025): one model as its own teacher; the student answers after continuous thoughts
and is pulled toward the teacher's hidden states (icot_hf.codi: CODITrainer, CODIConfig).

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/codi.py --config recipes/configs/4x4_mult/codi.yaml

It starts from a causal LM (the released GPT-2 preset: pretrained GPT-2 with LoRA, gsm8k/paper/codi.yaml;
the CPU preset: the explicit-CoT teacher trained here) and reads the same input/cot/answer datasets every
method reads. The saved folder is a CODIForCausalLM.
"""

import logging

from transformers import set_seed

from icot_hf.codi.codi_config import CODIConfig
from icot_hf.codi.codi_trainer import CODITrainer
from icot_hf.recipe_utils import ScriptArguments, begin_run, build_base_model, load_tokenizer, parse_args, raw_splits, train_and_save

RAW = ("input", "cot", "answer", "question")  # the raw columns its trainer reads


def main():
    script_args, training_args = parse_args(ScriptArguments, CODIConfig)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    if not begin_run(script_args, training_args):  # finished with these settings: nothing to do
        return
    set_seed(training_args.seed)
    start = script_args.teacher_name_or_path or script_args.model_name_or_path
    tokenizer = load_tokenizer(script_args, fallback_path=start)
    model = start if start else build_base_model(script_args, tokenizer)
    train, evaluation = raw_splits(script_args, RAW)
    trainer = CODITrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer)
    train_and_save(trainer, training_args)


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
