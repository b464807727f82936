"""The built wheel on its own: in a fresh virtualenv holding only the wheel (its dependencies seen
from the test environment's site-packages, where icot_hf is present only as the checkout's
editable install, which a plain path entry does not activate), run from a folder outside the
checkout, a TRL-style script trains every stage and the coupled folder answers through
`AutoModelForCausalLM`; TRL-style Coconut and CODI runs on a tiny Llama save folders that load from
another directory and generates in batches what each row gives alone; the `icot-hf` command runs packaged presets; `accelerate launch -m` runs a
recipe module."""

import os
import site
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import sys
    import icot_hf
    assert "{venv}" in icot_hf.__file__, icot_hf.__file__  # the wheel's copy, not the checkout's
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, GPT2Config
    from icot_hf import (CoupledConfig, CoupledTrainer, MindReadingConfig, MindReadingTrainer, StepwiseInternalizationConfig,
                         StepwiseInternalizationTrainer, TeacherConfig, TeacherTrainer, ThoughtEmulationConfig, ThoughtEmulationTrainer,
                         build_digit_tokenizer)

    rows = [{{"input": f"{{a}} {{b}} * {{c}} {{d}}", "cot": f"{{a * c % 10}} {{b * d % 10}} 0 + 1 2", "answer": f"{{b}} {{d}} {{a}} {{c}}"}}
            for a in range(1, 9) for b in range(3) for c in range(2) for d in range(2)]
    data = Dataset.from_list(rows)
    tok = build_digit_tokenizer()
    common = dict(max_steps=24, per_device_train_batch_size=8, learning_rate=1e-3, report_to="none", save_strategy="no", logging_steps=12)
    base = GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=128, bos_token_id=tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(base).save_pretrained("tiny")
    tok.save_pretrained("tiny")

    teacher = TeacherTrainer(model="tiny", args=TeacherConfig(output_dir="teacher", **common), train_dataset=data, processing_class=tok)
    teacher.train()
    teacher.save_model()
    student = MindReadingTrainer(model="tiny", teacher_model="teacher", args=MindReadingConfig(output_dir="student", **common),
                                 train_dataset=data, processing_class=tok, peft_config=LoraConfig(r=4, target_modules=["c_attn"]))
    student.train()
    student.save_model()
    emulator = ThoughtEmulationTrainer(model="tiny", teacher_model="teacher", args=ThoughtEmulationConfig(output_dir="emulator", **common),
                                       train_dataset=data, processing_class=tok)
    emulator.train()
    emulator.save_model()
    coupled = CoupledTrainer(student_model="student", emulator_model="emulator", args=CoupledConfig(output_dir="coupled", **common),
                             train_dataset=data, processing_class=tok)
    coupled.train()
    coupled.save_model()
    stepwise = StepwiseInternalizationTrainer(model="teacher", args=StepwiseInternalizationConfig(output_dir="stepwise", **common),
                                              train_dataset=data, eval_dataset=data.select(range(8)), processing_class=tok)
    stepwise.train()
    stepwise.save_model()
    model = AutoModelForCausalLM.from_pretrained("coupled")
    answers = model.answer(["1 2 * 1 0", "3 1 * 0 1"], tok)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers), answers
    print("TRL-STYLE OK", type(model).__name__, answers)
''')

COCONUT_SCRIPT = textwrap.dedent('''
    import os
    import icot_hf
    assert "{venv}" in icot_hf.__file__, icot_hf.__file__
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from icot_hf import CoconutConfig, CoconutTrainer, build_digit_tokenizer

    rows = [{{"input": f"{{a}} {{b}} * {{c}}", "cot": f"{{b * c % 10}} + {{a * c % 10}} {{b * c // 10}}", "answer": f"{{a * c}}"}}
            for a in range(1, 9) for b in range(4) for c in range(1, 5)]
    tok = build_digit_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained("tiny_llama")
    tok.save_pretrained("tiny_llama")
    args = CoconutConfig(output_dir="coconut", c_thought=1, epochs_per_stage=1, max_latent_stage=2, num_train_epochs=3,
                         per_device_train_batch_size=16, learning_rate=1e-3, latent_init_token="+", question_suffix="", step_suffix=" +",
                         answer_prefix="#### ", report_to="none", save_strategy="no")
    trainer = CoconutTrainer(model="tiny_llama", args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    trainer.save_model()
    os.makedirs("other", exist_ok=True)
    os.chdir("other")  # loads from another directory
    model = AutoModelForCausalLM.from_pretrained("../coconut").eval()
    tokenizer = AutoTokenizer.from_pretrained("../coconut", padding_side="left")
    prompts = [model.prompt(q, question_suffix="") for q in ["1 2 * 3", "4 * 4", "7 3 * 2", "2 2 2 * 1", "5 * 5", "8 1 * 4", "3 * 1 1", "9 9 * 9"]]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    for i, prompt in enumerate(prompts):
        alone = tokenizer([prompt], return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=8, do_sample=False)[0, alone["input_ids"].shape[1]:].tolist()
        assert out[i, batch["input_ids"].shape[1]:].tolist()[:len(single)] == single, i
    print("COCONUT OK", type(model).__name__, model.config.num_latent_thoughts)

    from icot_hf import CODIConfig, CODITrainer
    os.chdir("..")
    args = CODIConfig(output_dir="codi", num_latent=2, prj_dim=32, answer_prefix="#### ", per_device_train_batch_size=16,
                      learning_rate=1e-3, num_train_epochs=1, report_to="none", save_strategy="no")
    trainer = CODITrainer(model="tiny_llama", args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    trainer.save_model()
    os.chdir("other")
    model = AutoModelForCausalLM.from_pretrained("../codi").eval()
    answers = model.answer(["1 2 * 3", "4 * 4", "7 3 * 2"], AutoTokenizer.from_pretrained("../codi"), max_new_tokens=6)
    print("CODI OK", type(model).__name__, len(answers))
''')


def test_the_wheel_alone_trains_every_stage_and_its_command_runs_packaged_presets(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("icot_hf-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in ("icot_hf/recipes/teacher.py", "icot_hf/recipes/configs/4x4_mult/stepwise.yaml", "icot_hf/recipes/accelerate_configs/cpu.yaml",
                     "icot_hf/dataset_scripts/make_multiplication.py", "icot_hf/model_cards/model.md", "icot_hf/metrics/exact_match/exact_match.py",
                     "icot_hf/coconut/modeling_coconut.py", "icot_hf/recipes/configs/gsm8k/paper/coconut.yaml",
                     "icot_hf/codi/modeling_codi.py", "icot_hf/recipes/configs/gsm8k/paper/codi.yaml", "icot_hf/recipes/codi.py"):
        assert packaged in names, packaged

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    packages = next((venv / "lib").glob("python*/site-packages"))
    (packages / "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # the dependencies, not the editable icot_hf
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}:{env['PATH']}", OMP_NUM_THREADS="1")
    python = str(venv / "bin" / "python")

    script = work / "train.py"
    script.write_text(SCRIPT.format(venv=str(venv)))
    trl = subprocess.run([python, str(script)], cwd=work, capture_output=True, text=True, env=env)
    assert trl.returncode == 0, trl.stdout[-2000:] + trl.stderr[-4000:]
    assert "TRL-STYLE OK ImplicitCoTForCausalLM" in trl.stdout
    script = work / "coconut.py"
    script.write_text(COCONUT_SCRIPT.format(venv=str(venv)))
    coconut = subprocess.run([python, str(script)], cwd=work, capture_output=True, text=True, env=env)
    assert coconut.returncode == 0, coconut.stdout[-2000:] + coconut.stderr[-4000:]
    assert "COCONUT OK CoconutForCausalLM 2" in coconut.stdout and "CODI OK CODIForCausalLM 3" in coconut.stdout

    def icot_hf(*args):
        run = subprocess.run([str(venv / "bin" / "icot-hf"), *args], cwd=work, capture_output=True, text=True, env=env)
        assert run.returncode == 0, f"icot-hf {' '.join(args)}:\n" + run.stdout[-2000:] + run.stderr[-4000:]
        return run.stdout

    assert "4x4_mult/teacher" in icot_hf("presets")
    quick = ["--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--max_train_samples", "64"]
    icot_hf("make-data", "--config", "4x4_mult/data", "--digits", "2", "--train_size", "128", "--valid_size", "16", "--test_size", "16",
            "--output_dir", "data/2x2")
    icot_hf("teacher", "--config", "4x4_mult/teacher", "--dataset_name_or_path", "data/2x2", "--output_dir", "cli/teacher", *quick)
    icot_hf("stepwise", "--config", "4x4_mult/stepwise", "--dataset_name_or_path", "data/2x2", "--teacher_name_or_path", "cli/teacher",
            "--output_dir", "cli/stepwise", *quick)
    icot_hf("mind-reading", "--config", "4x4_mult/mind_reading", "--dataset_name_or_path", "data/2x2", "--teacher_name_or_path",
            "cli/teacher", "--output_dir", "cli/mind_reading", "--teacher_state_cache", "cli/cache", *quick)
    icot_hf("emulator", "--config", "4x4_mult/emulator", "--dataset_name_or_path", "data/2x2", "--teacher_name_or_path", "cli/teacher",
            "--output_dir", "cli/emulator", "--teacher_state_cache", "cli/cache", *quick)
    icot_hf("couple", "--config", "4x4_mult/couple", "--dataset_name_or_path", "data/2x2", "--student_name_or_path", "cli/mind_reading",
            "--emulator_name_or_path", "cli/emulator", "--output_dir", "cli/coupled", *quick)
    icot_hf("coconut", "--config", "4x4_mult/coconut", "--dataset_name_or_path", "data/2x2", "--teacher_name_or_path", "cli/teacher",
            "--output_dir", "cli/coconut", "--num_train_epochs", "2", "--max_latent_stage", "1", "--eval_exact_match_samples", "4",
            "--report_to", "none", "--max_train_samples", "64")
    assert (work / "cli" / "coconut" / "training_complete.json").is_file()
    icot_hf("codi", "--config", "4x4_mult/codi", "--dataset_name_or_path", "data/2x2", "--teacher_name_or_path", "cli/teacher",
            "--output_dir", "cli/codi", "--num_latent", "2", *quick)
    out = icot_hf("evaluate", "--task", "2x2", "--dataset_name_or_path", "data/2x2", "--teacher_model", "cli/teacher", "--stepwise_model",
                  "cli/stepwise", "--implicit_model", "cli/coupled", "--codi_model", "cli/codi", "--batch_sizes", "1", "8", "--max_examples", "8", "--max_examples_batch1", "2", "--output_dir", "cli/results")
    assert "Explicit CoT (teacher)" in out and "Implicit CoT (ICoT-KD)" in out and "Continuous thought (CODI)" in out and (work / "cli" / "results" / "results.json").is_file()
    bad = subprocess.run([str(venv / "bin" / "icot-hf"), "teacher", "--config", "4x4_mult/nope"], cwd=work, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "no packaged preset" in bad.stderr

    accelerate_config = icot_hf("accelerate-config", "cpu").strip()
    launch = subprocess.run([str(venv / "bin" / "python"), "-m", "accelerate.commands.launch", "--config_file", accelerate_config, "-m",
                             "icot_hf.recipes.teacher", "--config", str(packages / "icot_hf/recipes/configs/4x4_mult/no_cot.yaml"),
                             "--dataset_name_or_path", "data/2x2", "--output_dir", "cli/no_cot", *quick], cwd=work, capture_output=True, text=True, env=env)
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-4000:]
    assert (work / "cli" / "no_cot" / "training_complete.json").is_file()
