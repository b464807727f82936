"""Entry points a user meets that no other test runs: the README's inference example, the
tokenizer-training script, `use_peft` from a YAML config, and every accelerate launch config
(each parses to what its comment says, and launches a real recipe on what this machine has:
the GPU configs with --cpu, the DeepSpeed ones on the CPU; the losses match a plain run)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import REPO, multiplication_dataset, tiny_config

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
CONFIGS = REPO / "recipes" / "accelerate_configs"


def test_readme_inference_example_runs(tmp_path, tokenizer, monkeypatch):
    from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent

    config = tiny_config("gpt2", tokenizer)
    model = ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(config)),
        ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config)), tokenizer.eos_token_id, tokenizer.pad_token_id,
        max_answer_tokens=8)
    folder = tmp_path / "outputs" / "4x4_mult" / "coupled"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use the inference artifact"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    *statements, last = [line for line in code.strip().splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec("\n".join(statements), namespace)  # noqa: S102 - the README's own code
    answers = eval(last.split("#")[0], namespace)  # noqa: S307
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)
    assert answers == model.answer(["1 3 4 5 * 8 1 9 3"], tokenizer)  # the folder's model is the one the example loaded


def test_train_tokenizer_script(tmp_path):
    from transformers import AutoTokenizer

    from icot_hf.data import tokenize_dataset

    data = multiplication_dataset(3, 200, seed=3)
    text = tmp_path / "train.txt"
    text.write_text("".join(f"{r['input']}||{r['cot']} #### {r['answer']}\n" for r in data))
    run = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "train_tokenizer.py"), "--dataset", str(text), "--vocab_size", "300",
                          "--output_dir", str(tmp_path / "tok")], capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tokenizer) <= 300 and tokenizer.eos_token == tokenizer.pad_token
    line = " " + data[0]["input"]
    assert tokenizer.decode(tokenizer(line)["input_ids"]) == line  # byte-level: lossless
    views = tokenize_dataset(data.select(range(4)), tokenizer)
    row = views[0]
    assert [row["explicit_input_ids"][s] for s in row["explicit_separators"]] == [tokenizer.eos_token_id] * 3


def test_train_tokenizer_on_the_reference_strings(tmp_path):
    """--sequence_format reference learns merges from the paper's strings: ' ####' becomes fewer
    tokens than its 5 bytes (never seen by the compact-string tokenizer), and the reference views'
    separators sit after a space token of their own, as with GPT-2."""
    from transformers import AutoTokenizer

    from icot_hf.data import tokenize_dataset

    data = multiplication_dataset(3, 300, seed=4)
    folder = tmp_path / "data"
    data_dict = __import__("datasets").DatasetDict(train=data)
    data_dict.save_to_disk(folder)
    lengths = {}
    for sequence_format in ("compact", "reference"):
        run = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "train_tokenizer.py"), "--dataset", str(folder), "--vocab_size", "300",
                              "--sequence_format", sequence_format, "--output_dir", str(tmp_path / sequence_format)],
                             capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert run.returncode == 0, run.stderr[-2000:]
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / sequence_format)
        lengths[sequence_format] = len(tokenizer(" ####", add_special_tokens=False)["input_ids"])
    assert lengths["reference"] < lengths["compact"] == 5
    row = tokenize_dataset(data.select(range(2)), tokenizer, sequence_format="reference")[0]
    ids, seps = row["implicit_input_ids"], row["implicit_separators"]
    assert tokenizer.convert_ids_to_tokens([ids[seps[0] - 1], ids[seps[0] + 1]]) == ["\u0120", "\u0120####"]


def test_use_peft_from_yaml(tmp_path, tokenizer):
    from icot_hf.data import ICoTCollator, tokenize_dataset
    from icot_hf.recipe_utils import ScriptArguments, parse_args
    from icot_hf.trainers import TeacherConfig, TeacherTrainer

    config = tmp_path / "peft.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nuse_peft: true\nlora_r: 4\nlora_target_modules: [c_attn]\nuse_cpu: true\nreport_to: none\n")
    _, args = parse_args(ScriptArguments, TeacherConfig, argv=["--config", str(config)])
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    trainer = TeacherTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id),
                             train_dataset=tokenize_dataset(multiplication_dataset(2, 8), tokenizer))
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and "c_attn" in name for name in trainable)
    assert trainer.model.peft_config["default"].r == 4


EXPECTED = {  # what each config's comment promises
    "cpu.yaml": {"distributed_type": "NO"},
    "cpu_ddp.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "no"},  # torchrun + gloo (see its comment)
    "gpu.yaml": {"distributed_type": "NO", "mixed_precision": "bf16"},
    "multi_gpu.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "bf16"},
    "deepspeed_zero2.yaml": {"distributed_type": "DEEPSPEED", "zero_stage": 2, "offload_optimizer_device": "none"},
    "deepspeed_zero3.yaml": {"distributed_type": "DEEPSPEED", "zero_stage": 3, "offload_param_device": "none"},
    "deepspeed_zero3_offload.yaml": {"distributed_type": "DEEPSPEED", "zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_config_parses_as_described(name):
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)  # a new config needs an entry here
    config = load_config_from_file(str(CONFIGS / name))
    values = dict(config.to_dict(), **(config.deepspeed_config or {}))
    for key, expected in EXPECTED[name].items():
        assert str(values[key]).split(".")[-1] == str(expected), (name, key, values[key])


@pytest.fixture(scope="module")
def launch_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "200", "--valid_size", "8",
                    "--test_size", "8", "--output_dir", str(root / "data")], check=True, capture_output=True)
    return root


def launch_teacher(root, config, extra=(), batch=8, recipe_extra=()):
    out = root / config.replace(".yaml", "")
    command = [ACCELERATE, "launch", "--config_file", str(CONFIGS / config), "--mixed_precision", "no", *extra, str(REPO / "recipes" / "teacher.py"),
               "--dataset_name_or_path", str(root / "data"), "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", str(batch),
               "--model_config", "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}", "--eval_strategy", "no", "--save_strategy", "no",
               *recipe_extra]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads((out / "training_complete.json").read_text())["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["gpu.yaml", "multi_gpu.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3_offload.yaml"])
def test_launch_config_trains_here(launch_data, config):
    if config.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed not installed (pip install icot_hf[deepspeed])")
    plain = launch_teacher(launch_data, "cpu.yaml") if not (launch_data / "cpu").exists() else \
        json.loads((launch_data / "cpu" / "training_complete.json").read_text())["train_loss"]
    if config == "gpu.yaml":  # no GPU here: the same file, run on the CPU
        loss = launch_teacher(launch_data, config, extra=("--cpu",))
    elif config == "multi_gpu.yaml":  # its 2 processes, on the CPU with gloo, 2 x 4 = the plain run's batch of 8
        loss = launch_teacher(launch_data, config, batch=4, recipe_extra=("--use_cpu", "true"))
    else:
        loss = launch_teacher(launch_data, config)
    assert loss == pytest.approx(plain, rel=0.01)


def test_readme_icot_si_example_runs(tmp_path, tokenizer, monkeypatch):
    from icot_hf import ImplicitCoTStepwiseForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    folder = tmp_path / "outputs" / "4x4_mult" / "stepwise"
    ImplicitCoTStepwiseForCausalLM.from_trained(lm, position_gap=46, separator_token_id=tokenizer.eos_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use the inference artifact"):]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]  # the ICoT-SI example, after the coupled model's
    *statements, last = [line for line in code.strip().splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec("\n".join(statements), namespace)  # noqa: S102 - the README's own code
    out = eval(last.split("#")[0], namespace)  # noqa: S307
    assert isinstance(namespace["generator"].model, ImplicitCoTStepwiseForCausalLM)
    assert isinstance(out, list) and out[0]["generated_text"].startswith("1 3 4 5 * 8 1 9 3")
