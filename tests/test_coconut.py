"""Coconut as a library: steps from each task's CoT, a TRL-style run from raw data on a tiny Llama,
the saved folder through AutoModelForCausalLM (and trust_remote_code), batched generation that gives
each row what it gives alone, and bad input refused in one line with nothing written."""

import copy
import json

import pytest
import torch
from datasets import Dataset

LINES = ["1 3 4 5 * 8 1 9 3||8 0 7 6 + 0 4 4 2 0 ( 8 4 1 9 0 ) + 0 0 9 5 1 1 ( 8 4 0 5 2 1 ) + 0 0 0 3 0 2 4 ( 8 4 0 8 2 3 4 ) #### 8 4 0 8 2 3 4",
         "2 4 6 6 * 5 1 1 7||0 1 2 3 3 + 0 2 4 6 6 0 ( 0 3 6 9 9 0 ) + 0 0 2 4 6 6 0 ( 0 3 8 3 6 7 0 ) + 0 0 0 4 9 4 6 4 #### 0 3 8 7 5 2 7 4"]


def raw_dataset(n=32):
    rows = []
    for i in range(n):
        line = LINES[i % len(LINES)]
        question, rest = line.split("||")
        cot, answer = rest.split(" #### ")
        rows.append({"input": question, "cot": cot, "answer": answer})
    return Dataset.from_list(rows)


def digit_tokenizer():
    from icot_hf.tokenization import build_digit_tokenizer

    return build_digit_tokenizer()


def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))


def digit_args(tmp_path, **overrides):
    from icot_hf import CoconutConfig

    settings = dict(output_dir=str(tmp_path / "coconut"), c_thought=1, epochs_per_stage=1, max_latent_stage=2, num_train_epochs=3,
                    per_device_train_batch_size=8, learning_rate=1e-3, latent_init_token="+", question_suffix="",
                    step_suffix=" +", answer_prefix="#### ", eval_exact_match_samples=8, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True)
    return CoconutConfig(**{**settings, **overrides})


def test_steps_of_each_task():
    from icot_hf.coconut.data import split_steps

    assert split_steps("<<48/2=24>> <<48+24=72>>") == ["<<48/2=24>>", "<<48+24=72>>"]
    assert split_steps("8 0 7 6 + 0 4 4 2 0 ( 8 4 1 9 0 ) + 0 0 9 5 1") == ["8 0 7 6", "0 4 4 2 0 ( 8 4 1 9 0 )", "0 0 9 5 1"]
    assert split_steps("  ") == []


def test_curriculum_sequences_as_released():
    """Stage k replaces the first k steps by k x c latents; past max_latent_stage all steps go and the
    latents stay at the cap; labels only after the end marker."""
    from icot_hf.coconut.data import CurriculumSettings, stage_example

    ids = {"start": 90, "latent": 91, "end": 92}
    example = {"question_ids": [1, 2], "step_ids": [[3], [4], [5]], "answer_ids": [6, 0]}
    settings = CurriculumSettings(c_thought=2, max_latent_stage=2, pad_latent_to_max=True)
    assert stage_example(example, 0, settings, ids)["input_ids"] == [1, 2, 90, 92, 3, 4, 5, 6, 0]
    one = stage_example(example, 1, settings, ids)
    assert one["input_ids"] == [1, 2, 90, 91, 91, 92, 4, 5, 6, 0]
    assert one["labels"] == [-100] * 6 + [4, 5, 6, 0]
    assert stage_example(example, 3, settings, ids)["input_ids"] == [1, 2, 90, 91, 91, 91, 91, 92, 6, 0]
    short = {"question_ids": [1], "step_ids": [[3]], "answer_ids": [6, 0]}
    assert stage_example(short, 5, settings, ids)["input_ids"].count(91) == 4  # pad_latent_to_max
    assert stage_example(short, 5, CurriculumSettings(c_thought=2, max_latent_stage=2, pad_latent_to_max=False), ids)["input_ids"].count(91) == 2


def test_collator_lines_up_the_thoughts():
    from icot_hf.coconut.data import CoconutCollator

    batch = CoconutCollator(pad_token_id=0, latent_token_id=9)([{"input_ids": [1, 2, 3, 8, 9, 9, 7], "labels": [-100] * 6 + [7]},
                                                               {"input_ids": [1, 8, 9, 7, 5], "labels": [-100] * 3 + [7, 5]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 8, 9, 9, 7], [0, 0, 1, 8, 9, 7, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [0, 0, 1, 1, 1, 1, 1]]
    assert batch["labels"][1].tolist() == [-100] * 5 + [7, 5]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TRL-style run on a tiny Llama from raw input/cot/answer data, saved."""
    from icot_hf import CoconutTrainer

    tmp_path = tmp_path_factory.mktemp("coconut")
    tokenizer = digit_tokenizer()
    trainer = CoconutTrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path), train_dataset=raw_dataset(),
                             eval_dataset=raw_dataset(8), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    return trainer, tmp_path / "coconut"


def test_trained_folder_loads_with_automodel_and_generates_in_batches(trained):
    import icot_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, folder = trained
    assert json.loads((folder / "config.json").read_text())["model_type"] == "coconut"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "CoconutForCausalLM" and model.config.num_latent_thoughts == 2  # stage 2 x c_thought 1
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model.check_tokenizer(tokenizer)
    questions = ["1 3 4 5 * 8 1 9 3", "2 4 6 6 * 5 1 1 7", "1 2 * 3 4", "9 * 9", "1 2 3 * 4 5 6", "5 5 5 5 * 1 1 1 1", "7 * 1 2", "3 4 5 6 * 7"]
    prompts = [model.prompt(q, question_suffix="") for q in questions]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    width = batch["input_ids"].shape[1]
    for i, prompt in enumerate(prompts):
        alone = tokenizer([prompt], return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=12, do_sample=False)[0, alone["input_ids"].shape[1]:].tolist()
        row = out[i, width:].tolist()[:len(single)]
        assert row == single, f"row {i}"
    # the same weights answer the same through the bundled code, without icot_hf's registration
    remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert torch.equal(remote.generate(**batch, max_new_tokens=12, do_sample=False), out)


def test_a_left_padded_forward_without_position_ids_gives_each_row_what_it_gives_alone():
    """model(input_ids, attention_mask) on a left-padded batch (no position ids: a user's own
    forward, a TRL loop) counts each row's positions from its first real token, so every row's
    logits equal its own forward alone (planted mistake `coconut-positions-ignore-left-padding`).
    On GPT-2, whose position embeddings are absolute (a rotary model would not see a shift)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from icot_hf.coconut import CoconutForCausalLM

    tokenizer = digit_tokenizer()
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=128,
                                    eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    model = CoconutForCausalLM.from_base(lm, tokenizer, num_latent_thoughts=2, init_token=tokenizer.eos_token).eval()
    tokenizer.padding_side = "left"
    prompts = [model.prompt(q, question_suffix="") for q in ("1 3 4 5 * 8 1 9 3", "9 * 9", "1 2 3 * 4 5 6")]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        together = model(**batch).logits
        for i, prompt in enumerate(prompts):
            alone = model(**tokenizer([prompt], return_tensors="pt")).logits[0]
            torch.testing.assert_close(together[i, -alone.shape[0]:], alone, rtol=1e-4, atol=1e-5, msg=f"row {i}")


def test_latents_change_the_answer(trained):
    """The thought block is read: feeding token embeddings at the latents (a plain LM) changes the logits."""
    trainer, folder = trained
    model = trainer.model.eval()
    tokenizer = trainer.processing_class
    ids = tokenizer([model.prompt("1 3 4 5 * 8 1 9 3", question_suffix="")], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        latent = model(input_ids=ids).logits[0, -1]
        plain = model.lm(input_ids=ids).logits[0, -1]
    assert (latent - plain).abs().max() > 1e-3


def test_exact_match_is_evaluated(trained):
    trainer, _ = trained
    metrics = trainer.evaluate()
    assert "eval_exact_match" in metrics and 0.0 <= metrics["eval_exact_match"] <= 1.0
    logged = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]
    assert logged["eval_exact_match"] == metrics["eval_exact_match"]  # in the same entry the callbacks see
    assert "eval_loss" in metrics


# ---------------------------------------------------------------- bad input: one line, nothing written

def test_c_thought_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="c_thought must be >= 1"):
        digit_args(tmp_path, c_thought=0)
    assert not (tmp_path / "coconut").exists()


def test_data_without_steps_is_refused(tmp_path):
    from icot_hf import CoconutTrainer

    tokenizer = digit_tokenizer()
    data = Dataset.from_list([{"input": "1 * 2", "cot": "", "answer": "2"}, *raw_dataset(2)])
    with pytest.raises(ValueError, match="no reasoning steps.*row 0"):
        CoconutTrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path), train_dataset=data, processing_class=tokenizer)
    assert not (tmp_path / "coconut").exists()


def test_tokenizer_with_latent_tokens_elsewhere_is_refused(trained, tmp_path):
    from icot_hf import CoconutTrainer
    from icot_hf.coconut import LATENT

    _, folder = trained
    tokenizer = digit_tokenizer()
    tokenizer.add_tokens(["<x>", LATENT])  # the latent token at another id than the model's
    with pytest.raises(ValueError, match="tokenizer holds the Coconut tokens at"):
        CoconutTrainer(model=str(folder), args=digit_args(tmp_path), train_dataset=raw_dataset(4), processing_class=tokenizer)


def test_another_methods_folder_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from icot_hf import CoconutTrainer, ImplicitCoTStepwiseForCausalLM

    tokenizer = digit_tokenizer()
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2))
    ImplicitCoTStepwiseForCausalLM.from_trained(lm, position_gap=3, separator_token_id=tokenizer.eos_token_id).save_pretrained(tmp_path / "si")
    tokenizer.save_pretrained(tmp_path / "si")
    with pytest.raises(ValueError, match="icot_stepwise model"):
        CoconutTrainer(model=str(tmp_path / "si"), args=digit_args(tmp_path), train_dataset=raw_dataset(4))
    assert not (tmp_path / "coconut").exists()


def test_prompt_without_start_marker_is_refused(trained):
    from icot_hf.coconut import LATENT

    trainer, _ = trained
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    ids = tokenizer(["1 2 * 3 4" + LATENT + LATENT + "<|end-latent|>"], return_tensors="pt")
    with pytest.raises(ValueError, match="no <\\|start-latent\\|> before it"):
        model.generate(**ids, max_new_tokens=4)
    ends_inside = tokenizer([model.prompt("1 2 * 3 4", question_suffix="").removesuffix("<|end-latent|>")], return_tensors="pt")
    with pytest.raises(ValueError, match="ends inside its thought block"):
        model.generate(**ends_inside, max_new_tokens=4)


@pytest.mark.parametrize("preset", ["4x4_mult/coconut.yaml", "gsm8k/paper/coconut.yaml"])
def test_presets_parse(preset, tmp_path):
    import yaml

    from conftest import REPO
    from icot_hf import CoconutConfig
    from icot_hf.recipe_utils import ScriptArguments, parse_args

    path = REPO / "recipes" / "configs" / preset
    _, args = parse_args(ScriptArguments, CoconutConfig, argv=["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false"])
    values = yaml.safe_load(path.read_text())
    assert args.c_thought == values["c_thought"] and args.max_latent_stage == values["max_latent_stage"]
    if "paper" in preset:  # the released args/gsm_coconut.yaml
        assert (args.c_thought, args.epochs_per_stage, args.max_latent_stage, args.start_epoch + args.num_train_epochs) == (2, 3, 3, 25)
        assert args.learning_rate == 1e-4 and args.weight_decay == 0.01 and args.max_grad_norm == 0.0 and args.weight_decay_all_parameters
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 128 and args.reset_optimizer == "epoch"
        assert args.lr_scheduler_type == "constant" and not args.disable_dropout and not args.bf16


def test_recipe_trains_from_a_teacher_folder(tmp_path):
    """`icot-hf coconut` on the CPU preset, shrunk: a teacher folder and a saved dataset in, a
    CoconutForCausalLM folder with its completion marker out."""
    import subprocess
    import sys

    from datasets import DatasetDict
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    import icot_hf  # noqa: F401

    tokenizer = digit_tokenizer()
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=4, n_positions=128,
                                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    DatasetDict(train=raw_dataset(16), valid=raw_dataset(4)).save_to_disk(str(tmp_path / "data"))
    command = [sys.executable, "-c", "from icot_hf.cli import main; main()", "coconut", "--config", "4x4_mult/coconut", "--teacher_name_or_path", str(tmp_path / "teacher"),
               "--dataset_name_or_path", str(tmp_path / "data"), "--output_dir", str(tmp_path / "coconut"), "--max_train_samples", "16",
               "--num_train_epochs", "2", "--max_latent_stage", "1", "--per_device_train_batch_size", "8", "--eval_exact_match_samples", "4",
               "--cpu_bf16", "false", "--use_cpu", "true", "--report_to", "none"]
    run = subprocess.run(command, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "coconut" / "training_complete.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "coconut")
    assert type(model).__name__ == "CoconutForCausalLM" and model.config.num_latent_thoughts == 1


def test_a_coconut_row_in_the_results_table(trained, tmp_path):
    """`icot-hf evaluate --coconut_model`: exact match, what it writes before the answer and speed, in the shared table."""
    import subprocess
    import sys

    from datasets import DatasetDict

    _, folder = trained
    DatasetDict(test=raw_dataset(8)).save_to_disk(str(tmp_path / "data"))
    command = [sys.executable, "-c", "from icot_hf.cli import main; main()", "evaluate", "--task", "tiny", "--dataset_name_or_path",
               str(tmp_path / "data"), "--coconut_model", str(folder), "--batch_sizes", "1", "4", "--max_examples", "8",
               "--max_examples_batch1", "2", "--output_dir", str(tmp_path / "results")]
    run = subprocess.run(command, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    entry = next(iter(results["evaluations"].values()))["coconut"]
    assert entry["num_examples"] == 8 and 0.0 <= entry["accuracy"] <= 1.0 and "cot_tokens_generated" in entry
    assert set(entry["throughput"]) == {"1", "4"}
    assert "Continuous thought (Coconut)" in (tmp_path / "results" / "results.md").read_text()
    wrong = subprocess.run([*command[:6], "--teacher_model", str(folder), *command[8:]], capture_output=True, text=True)
    assert wrong.returncode != 0 and "pass it as --coconut_model" in wrong.stderr


def test_model_card_cites_coconut_and_push_takes_the_one_path(trained, monkeypatch):
    from icot_hf import hub

    trainer, folder = trained
    card = trainer.model_card("4x4 multiplication")
    assert "Continuous-thought model (Coconut)" in card and "hao2024training" in card and "model.answer" in card
    pushed = {}
    monkeypatch.setattr(hub, "push_folder", lambda folder, repo_id, card=None, **kw: pushed.update(folder=folder, repo_id=repo_id, card=card))
    trainer.push_to_hub()
    assert pushed["folder"] == trainer.args.output_dir and "Coconut" in pushed["card"]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_lora_run_trains_adapters_and_the_new_token_rows_and_its_folder_loads_alone(tmp_path, kind):
    """TRL-style with peft_config: only the adapters and the three new tokens' rows train (the
    base stays as it was); the saved folder (adapter + the base it sits on) loads with
    AutoModelForCausalLM from another directory, answers as the trained model does, and batched
    generation over left-padded prompts gives each row what it gives alone. GPT-2 ties its output
    layer to the input embedding; the tiny Llama does not."""
    import shutil

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from icot_hf import CoconutTrainer

    tokenizer = digit_tokenizer()
    torch.manual_seed(0)
    if kind == "llama":
        lm, targets = tiny_llama(tokenizer), ["q_proj", "v_proj"]
    else:
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=128,
                                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
        targets = ["c_attn"]
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    trainer = CoconutTrainer(model=lm, args=digit_args(tmp_path), train_dataset=raw_dataset(), processing_class=tokenizer,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    model = trainer.model
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "trainable_tokens_delta" in name for name in trainable), trainable
    assert any("trainable_tokens_delta" in name for name in trainable)
    trainer.train()
    moved = {name: float(p.abs().max()) for name, p in model.named_parameters() if p.requires_grad and ("lora_B" in name or "delta" in name)}
    assert all(v > 0 for v in moved.values()), moved  # both start at zero: they trained
    trainer.save_model()
    folder = tmp_path / "moved"
    shutil.copytree(tmp_path / "coconut", folder)
    shutil.rmtree(tmp_path / "coconut")
    assert (folder / "lora_adapter" / "adapter_config.json").exists() and (folder / "lora_base" / "config.json").exists()
    base = model._frozen_base().state_dict()
    new_rows = [model.config.latent_token_id, model.config.start_latent_id, model.config.end_latent_id]
    for key, value in before.items():  # the base the adapters sit on is the LM as given, bar the rows the tokens added
        rows = min(value.shape[0], base[key].shape[0]) if value.dim() else None
        torch.testing.assert_close(base[key][:rows], value[:rows], msg=key)

    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded).__name__ == "CoconutForCausalLM" and loaded.has_lora
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    questions = ["1 3 4 5 * 8 1 9 3", "2 4 6 6 * 5 1 1 7", "1 2 * 3 4", "9 * 9", "1 2 3 * 4 5 6", "5 5 5 5 * 1 1 1 1", "7 * 1 2", "3 4 5 6 * 7"]
    prompts = [loaded.prompt(q, question_suffix="") for q in questions]
    batch = loaded_tokenizer(prompts, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
        merged = copy.deepcopy(model).merge_lora()
        assert not merged.has_lora
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-5)
    out = loaded.generate(**batch, max_new_tokens=12, do_sample=False)
    width = batch["input_ids"].shape[1]
    for i, prompt in enumerate(prompts):
        alone = loaded_tokenizer([prompt], return_tensors="pt")
        single = loaded.generate(**alone, max_new_tokens=12, do_sample=False)[0, alone["input_ids"].shape[1]:].tolist()
        assert out[i, width:].tolist()[:len(single)] == single, f"row {i}"
    assert set(new_rows) == set(model.lm.peft_config["default"].trainable_token_indices)


def test_the_evaluation_loss_is_measured_at_the_stage_being_trained(tmp_path):
    """Each epoch's evaluation reads the evaluation examples at that epoch's stage: the logged loss
    equals the final model's own loss on them at the final stage. (The curriculum's epoch setter was
    once called `set_epoch`, which the Trainer's evaluation loader also calls, with 0: every
    evaluation then measured stage 0.)"""
    from icot_hf import CoconutTrainer

    tokenizer = digit_tokenizer()
    trainer = CoconutTrainer(model=tiny_llama(tokenizer), args=digit_args(tmp_path, eval_strategy="epoch", per_device_eval_batch_size=8),
                             train_dataset=raw_dataset(), eval_dataset=raw_dataset(8), processing_class=tokenizer)
    trainer.train()
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(logged) == 3 and trainer.train_dataset.stage == 2 and trainer.eval_dataset.stage == 2
    model = trainer.model.eval()
    with torch.no_grad():
        batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
        at_stage = model(**{k: v.to(model.device) for k, v in batch.items()}).loss.item()
    assert abs(logged[-1] - at_stage) < 1e-4, (logged, at_stage)
