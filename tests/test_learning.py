"""Real learning checks, kept small enough for CI: a teacher trained a few hundred steps
on 2x2 multiplication answers held-out problems correctly."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import multiplication_dataset, tiny_config
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.evaluation import ExplicitCoTAnswerer, evaluate_answerer
from icot_hf.trainers import TeacherConfig, TeacherTrainer


@pytest.mark.slow
def test_teacher_learns_2x2_multiplication(tmp_path, tokenizer):
    data = multiplication_dataset(2, 7100, seed=11)
    train, held_out = data.select(range(7000)), data.select(range(7000, 7100))  # distinct problems
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=4, width=128))
    args = TeacherConfig(output_dir=str(tmp_path), max_steps=1400, per_device_train_batch_size=64, learning_rate=3e-3, warmup_steps=30,
                         lr_scheduler_type="cosine", logging_steps=100, save_strategy="no", report_to="none", use_cpu=True, seed=0)
    TeacherTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id), train_dataset=tokenize_dataset(train, tokenizer)).train()
    result = evaluate_answerer(ExplicitCoTAnswerer(model, tokenizer, max_new_tokens=40), held_out["input"], held_out["answer"], batch_size=100)
    assert result["accuracy"] >= 0.9, result["predictions"][:5]
