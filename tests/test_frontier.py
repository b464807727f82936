"""ICoT-SI's frontier: the model at the end of each removal stage is saved, answers as the
trainer evaluated it (writing the CoT it has left, then the answer), survives a resume, is
never mixed with an older run's points, and is evaluated into results.json / frontier.png."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import REPO, multiplication_dataset, tiny_config
from icot_hf.data import ICoTCollator, answer_from_generation, tokenize_dataset
from icot_hf import ImplicitCoTStepwiseForCausalLM
from icot_hf.evaluation import ExplicitCoTAnswerer
from icot_hf.stepwise import StepwiseInternalizationConfig, StepwiseInternalizationTrainer


def train(output_dir, tokenizer, data, max_steps, resume=None, **kwargs):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    args = StepwiseInternalizationConfig(
        output_dir=str(output_dir), report_to="none", use_cpu=True, per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1,
        seed=1, lr_scheduler_type="constant", max_steps=max_steps, removal_schedule="gated", keep_positions=True, remove_per_stage=2,
        removal_start_stage=1, gate_every_steps=2, max_stage_steps=2, gate_samples=16, save_frontier_points=True, save_strategy="steps",
        save_steps=2, save_total_limit=None, **kwargs)
    trainer = StepwiseInternalizationTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("explicit",)),
                                             train_dataset=data, eval_dataset=data.select(range(16)), processing_class=tokenizer,
                                             separator_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    return trainer


def index(output_dir):
    return json.loads((output_dir / "frontier" / "index.json").read_text())


def test_each_stage_end_is_saved_as_the_model_of_that_step_and_answers_as_the_trainer_did(tmp_path, tokenizer):
    raw = multiplication_dataset(2, 64, seed=3)
    data = tokenize_dataset(raw, tokenizer, views=("explicit",))
    cot = data[0]["explicit_separators"][1] - data[0]["explicit_separators"][0] - 1  # 2x2: every CoT has this length
    trainer = train(tmp_path / "run", tokenizer, data, max_steps=12)
    points = index(tmp_path / "run")
    assert points["cot_tokens_total"] == cot
    removed = list(range(2, cot, 2))  # each 2-step stage ends by its cap until the CoT is gone
    assert [p["cot_tokens_removed"] for p in points["points"]] == removed
    assert [p["step"] for p in points["points"]] == [2 * (i + 1) for i in range(len(removed))]
    assert all(p["examples_seen"] == 8 * p["step"] and p["reason"] == "cap" for p in points["points"])

    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))(data.select(range(8)).to_list())
    for point in points["points"]:
        folder = tmp_path / "run" / "frontier" / point["model_dir"]
        saved = {k.removeprefix("lm."): v for k, v in load_file(folder / "model.safetensors").items()}
        at_step = load_file(tmp_path / "run" / f"checkpoint-{point['step']}" / "model.safetensors")
        assert saved.keys() == at_step.keys() and all(torch.equal(saved[k], at_step[k]) for k in saved)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert isinstance(model, ImplicitCoTStepwiseForCausalLM) and model.config.position_gap == point["cot_tokens_removed"]
        # the trainer's own exact-match path at that stage, with the same weights
        trainer.model.load_state_dict(model.lm.state_dict())
        trainer._stage = point["from_stage"]
        expected = [answer_from_generation(tokenizer.decode(row, skip_special_tokens=True)) for row in trainer.answer_batch(trainer.model.eval(), batch)]
        answerer = ExplicitCoTAnswerer(model, tokenizer, max_new_tokens=trainer.args.max_new_tokens)
        assert answerer(raw["input"][:8]) == expected
        assert len(answerer.cot_lengths) == 8
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run").config.position_gap == cot  # the final model: all removed


def test_a_resumed_run_lists_the_same_points_and_a_fresh_run_only_its_own(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 64, seed=3), tokenizer, views=("explicit",))
    train(tmp_path / "full", tokenizer, data, max_steps=12)
    full = index(tmp_path / "full")
    train(tmp_path / "cut", tokenizer, data, max_steps=3)
    train(tmp_path / "cut", tokenizer, data, max_steps=12, resume=str(tmp_path / "cut" / "checkpoint-2"))
    resumed = index(tmp_path / "cut")
    keys = ("model_dir", "step", "cot_tokens_removed", "reason")
    assert [{k: p[k] for k in keys} for p in resumed["points"]] == [{k: p[k] for k in keys} for p in full["points"]]

    train(tmp_path / "full", tokenizer, data, max_steps=3)  # a new run in the same folder, not resumed
    fresh = index(tmp_path / "full")
    assert [p["model_dir"] for p in fresh["points"]] == ["removed-002"]
    assert (tmp_path / "full" / "frontier" / full["points"][-1]["model_dir"]).is_dir()  # still on disk, never listed


def test_evaluate_models_writes_the_frontier(tmp_path, tokenizer):
    raw = multiplication_dataset(2, 64, seed=3)
    data = tokenize_dataset(raw, tokenizer, views=("explicit",))
    train(tmp_path / "si", tokenizer, data, max_steps=8)
    teacher = tmp_path / "teacher"
    AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    test_file = tmp_path / "test.txt"
    test_file.write_text("".join(f"{r['input']}||{r['cot']} #### {r['answer']}\n" for r in raw.select(range(12))))
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate_models.py"), "--task", "2x2", "--test_files", str(test_file),
                          "--teacher_model", str(teacher), "--stepwise_model", str(tmp_path / "si"), "--frontier_dir", str(tmp_path / "si" / "frontier"),
                          "--batch_sizes", "1", "4", "--max_examples_batch1", "4", "--frontier_batch1_examples", "4", "--output_dir", str(out)],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    frontier = results["frontier"]
    assert [p["cot_tokens_removed"] for p in frontier] == [p["cot_tokens_removed"] for p in index(tmp_path / "si")["points"]]
    for point in frontier:
        assert set(point) >= {"cot_tokens_removed", "cot_tokens_total", "exact_match", "examples_per_second_batch1", "model_dir",
                              "cot_tokens_generated"}
        assert 0.0 <= point["exact_match"] <= 1.0 and point["examples_per_second_batch1"] > 0
        assert point["cot_tokens_generated"] >= 0.0
    assert "cot_tokens_generated" in results["evaluations"][str(test_file)]["explicit_cot"]
    assert "Frontier" in (out / "results.md").read_text() and (out / "frontier.png").stat().st_size > 0
    # A re-run with the same models and settings evaluates nothing and rewrites nothing.
    written = {name: (out / name).read_bytes() for name in ("results.json", "results.md", "frontier.png")}
    again = subprocess.run(run.args, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "unchanged" in again.stdout and "nothing is evaluated again" in again.stderr
    assert {name: (out / name).read_bytes() for name in written} == written
    # Interrupted after its third measurement (a crash, a kill), the evaluation resumes from what it
    # had finished and measures only the rest; the table it ends with keeps the finished entries.
    import icot_hf.recipes.evaluate_models as evaluate_models

    (out / "results.json").unlink()
    calls, real = [], evaluate_models.evaluate_answerer

    def crashing(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(kwargs.get("description"))
        return real(*args, **kwargs)

    argv = ["evaluate_models.py", *run.args[2:]]
    monkeypatched = dict(evaluate_answerer=crashing)
    saved, saved_argv = {k: getattr(evaluate_models, k) for k in monkeypatched}, sys.argv
    try:
        vars(evaluate_models).update(monkeypatched)
        sys.argv = argv
        try:
            evaluate_models.main()
        except KeyboardInterrupt:
            pass
        partial = json.loads((out / "results.partial.json").read_text())
        assert not (out / "results.json").exists() and sum(map(len, partial["done"].values())) == 1  # teacher done (2 measurements)
        vars(evaluate_models).update(saved)
        counted = []
        vars(evaluate_models)["evaluate_answerer"] = lambda *a, **k: counted.append(k.get("description")) or real(*a, **k)
        evaluate_models.main()
    finally:
        vars(evaluate_models).update(saved)
        sys.argv = saved_argv
    assert not any(d.startswith("explicit_cot") for d in counted)  # the teacher's entry was not measured again
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["evaluations"][str(test_file)]["explicit_cot"] == partial["done"]["methods"][json.dumps([str(test_file), "explicit_cot"])]
    assert [p["exact_match"] for p in resumed["frontier"]] == [p["exact_match"] for p in frontier]
    assert not (out / "results.partial.json").exists()
