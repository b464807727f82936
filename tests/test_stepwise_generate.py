"""An ICoT-SI model saved by the recipe is an ordinary checkpoint: `AutoModelForCausalLM` loads it
and plain `generate` / `pipeline("text-generation")` on the documented prompt (`input S`,
left-padded) give the answers icot_hf's answerer gives with the positions passed explicitly,
on the paper's 4x4 test problems. Without the position gap the same weights answer otherwise,
so the comparison can fail."""

import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList, pipeline

from conftest import REPO, SHARED_DATA, tiny_config
from icot_hf import ImplicitCoTStepwiseForCausalLM
from icot_hf.data import answer_from_generation, load_icot_dataset, read_icot_text
from icot_hf.evaluation import ExplicitCoTAnswerer
from icot_hf.generation import SeparatorCountCriteria, prompt_position_ids


def questions_4x4(data_dir, count=48):
    paper = SHARED_DATA / "4_by_4_mult" / "test_bigbench.txt"
    if paper.is_file():
        return [row["input"] for row in read_icot_text(paper)[:count]]
    return list(load_icot_dataset(str(data_dir), split="test")["input"][:count])


def answers_by_plain_generate(model, tokenizer, questions):
    prompt = tokenizer([q + tokenizer.eos_token for q in questions], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answers = []
    for row in out[:, prompt["input_ids"].shape[1]:].tolist():
        pieces, piece = [], []
        for token in row:
            if token == tokenizer.eos_token_id:
                pieces.append(piece)
                piece = []
            else:
                piece.append(token)
        answers.append(answer_from_generation(tokenizer.decode(pieces[1], skip_special_tokens=True)) if len(pieces) > 1 else "")
    return answers


def test_the_recipes_icot_si_model_answers_through_plain_generate_and_pipeline(tmp_path, tokenizer):
    # lr 1e-7: the weights stay near their start, whose output is driven by its positions, so any
    # position the wrapper got wrong would show in the tokens generated
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "4", "--train_size", "256",
                    "--valid_size", "32", "--test_size", "48", "--output_dir", str(data)], check=True, capture_output=True)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    start = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=2, width=64))
    with torch.no_grad():  # large position embeddings: what the model writes depends on its positions (a random start with
        start.transformer.wpe.weight.normal_(0.0, 1.0)  # tied embeddings only repeats its last token)
    start.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "stepwise"
    run = subprocess.run([sys.executable, str(REPO / "recipes" / "stepwise.py"), "--dataset_name_or_path", str(data), "--teacher_name_or_path",
                          str(teacher), "--output_dir", str(out), "--removal_schedule", "gated", "--keep_positions", "true", "--remove_per_stage",
                          "30", "--removal_start_stage", "1", "--gate_every_steps", "2", "--max_stage_steps", "2", "--max_steps", "6",
                          "--per_device_train_batch_size", "16", "--learning_rate", "1e-7", "--eval_strategy", "no", "--save_strategy", "no",
                          "--report_to", "none", "--use_cpu", "true"],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out, padding_side="left")
    assert isinstance(model, ImplicitCoTStepwiseForCausalLM) and model.config.position_gap > 0
    questions = questions_4x4(data)
    prompt = tok([q + tok.eos_token for q in questions], padding=True, return_tensors="pt")  # the documented prompt
    length, gap, sep = prompt["input_ids"].shape[1], model.config.position_gap, tok.eos_token_id
    with torch.no_grad():
        plain = model.generate(**prompt, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        inner = model.lm  # the same weights, the positions given explicitly as icot_hf's generation gives them
        stop = dict(max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None,
                    stopping_criteria=StoppingCriteriaList([SeparatorCountCriteria(sep, length, 2)]))
        explicit = inner.generate(**prompt, position_ids=prompt_position_ids(prompt["attention_mask"], gap), **stop)
        no_gap = inner.generate(**prompt, **stop)
    assert torch.equal(plain, explicit)  # token for token, every row
    assert not torch.equal(plain, no_gap)  # the gap changes what these weights write: the comparison can fail

    inner.config.icot_position_gap = gap  # icot_hf's answerer on the bare LM passes the positions itself
    expected = ExplicitCoTAnswerer(inner, tok)(questions)
    del inner.config.icot_position_gap
    assert ExplicitCoTAnswerer(model, tok)(questions) == expected == answers_by_plain_generate(model, tok, questions)

    generator = pipeline("text-generation", model=model, tokenizer=tok)
    text = generator(questions[0] + tok.eos_token, max_new_tokens=40, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert text == tok.decode(plain[0, length:], skip_special_tokens=True)
