"""Odd input either works correctly or stops with a message that names the problem and the fix
(issue 16): byte-order marks, lone-CR files, repeated markers, symbols outside the digit
vocabulary, a string where a list of questions belongs, empty questions, misspelt model_config
keys, and YAML that reads `no` as false or gives a list where a string is expected."""

import pytest
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.data import ICoTFormatError, parse_icot_line, read_icot_text, tokenize_dataset
from icot_hf.recipe_utils import ScriptArguments, build_base_model, parse_args
from icot_hf.trainers import StepwiseInternalizationConfig, TeacherConfig

LINE = "1 2 * 3 4||3 6 + 0 4 8 #### 3 0 4 0"


def test_a_byte_order_mark_is_not_part_of_the_first_input(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + (LINE + "\n" + LINE + "\n").encode())
    rows = read_icot_text(path)
    assert [r["input"] for r in rows] == ["1 2 * 3 4", "1 2 * 3 4"]


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"])
def test_every_newline_style_gives_one_example_per_line(tmp_path, newline):
    path = tmp_path / "lines.txt"
    path.write_bytes(newline.join([LINE.encode(), LINE.replace("1 2", "5 6").encode(), b"", LINE.encode()]) + newline)
    rows = read_icot_text(path)
    assert len(rows) == 3 and rows[1]["input"] == "5 6 * 3 4" and rows[0]["answer"] == "3 0 4 0"


def test_line_numbers_stay_right_with_lone_cr(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(LINE.encode() + b"\r" + b"no separator here\r")
    with pytest.raises(ICoTFormatError, match=r"bad.txt:2: no '\|\|'"):
        read_icot_text(path)


@pytest.mark.parametrize("line, message", [
    ("1 2 * 3 4||3 6 #### 4 8 #### 3 0 4 0", "more than one '####'"),
    ("1 2 * 3 4||3 6 || 4 8 #### 3 0 4 0", r"more than one '\|\|'"),
])
def test_repeated_markers_are_an_error_not_part_of_the_cot(line, message):
    with pytest.raises(ICoTFormatError, match=f"data.txt:7: {message}"):
        parse_icot_line(line, "data.txt", 7)


def test_symbols_outside_the_digit_vocabulary_are_an_error(tokenizer):
    from datasets import Dataset

    data = Dataset.from_dict({"input": ["1 2 x 3 4"], "cot": ["3 6"], "answer": ["3 0 4 0"]})
    with pytest.raises(ICoTFormatError, match=r"symbol\(s\) \['x'\] are not in the tokenizer's vocabulary.*extra_symbols"):
        tokenize_dataset(data, tokenizer, views=("explicit",))


@pytest.fixture(scope="module")
def implicit_model(tokenizer):
    config = tiny_config("gpt2", tokenizer)
    return ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(config)),
        ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config)), tokenizer.eos_token_id, tokenizer.pad_token_id).eval()


def test_answer_with_a_string_asks_for_a_list(implicit_model, tokenizer):
    with pytest.raises(TypeError, match=r"pass \[question\]"):
        implicit_model.answer("1 2 * 3 4", tokenizer)
    assert len(implicit_model.answer(["1 2 * 3 4"], tokenizer)) == 1


def test_answer_with_an_empty_question_is_an_error(implicit_model, tokenizer):
    with pytest.raises(ValueError, match=r"question\(s\) \[1\] are empty"):
        implicit_model.answer(["1 2 * 3 4", "  "], tokenizer)


def test_a_misspelt_model_config_key_is_named(tokenizer):
    args = ScriptArguments(model_config={"model_type": "gpt2", "n_layers": 2, "n_embd": 32, "n_head": 2})
    with pytest.raises(ValueError, match="'n_layers' is not a field of GPT2Config.*did you mean 'n_layer'"):
        build_base_model(args, tokenizer)
    good = ScriptArguments(model_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2})
    assert build_base_model(good, tokenizer).config.n_layer == 2


def test_yaml_unquoted_no_and_a_list_of_lora_modules(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval_strategy: no\nsave_strategy: no\nuse_peft: true\nlora_target_modules: [c_attn, c_proj]\n")
    _, args = parse_args(ScriptArguments, TeacherConfig, argv=["--config", str(path), "--output_dir", str(tmp_path / "o")])
    assert args.eval_strategy == "no" and args.save_strategy == "no"
    assert args.lora_config().target_modules == {"c_attn", "c_proj"}
    path.write_text("eval_strategy: yes\n")
    with pytest.raises(SystemExit, match=r"c.yaml: eval_strategy: True is not a strategy"):
        parse_args(ScriptArguments, StepwiseInternalizationConfig, argv=["--config", str(path)])


def test_dataset_writers_never_delete_a_users_folder(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    folder = tmp_path / "myfolder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    text = tmp_path / "tiny.txt"
    text.write_text(LINE + "\n")
    for script, extra in (("make_multiplication.py", ["--digits", "2", "--train_size", "20", "--valid_size", "5", "--test_size", "5"]),
                          ("convert_icot_text.py", ["--train", str(text)])):
        run = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / script), *extra, "--output_dir", str(folder), "--overwrite"],
                             capture_output=True, text=True)
        assert run.returncode != 0 and "not a saved dataset; nothing was written" in run.stderr, run.stderr[-500:]
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind


def test_a_mistyped_local_dataset_path_is_not_a_hub_lookup(tmp_path, monkeypatch):
    from icot_hf.data import load_icot_dataset

    (tmp_path / "data" / "4x4_mult").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ICoTFormatError, match=r"data/4x4_mul: no such dataset folder or file; did you mean 'data/4x4_mult'\?"):
        load_icot_dataset("data/4x4_mul")


def test_push_refuses_an_unfinished_stage(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "checkpoint-10").mkdir()
    run = subprocess.run([sys.executable, str(REPO / "recipes" / "push.py"), "--folder", str(tmp_path), "--repo_id", "me/x", "--stage", "teacher",
                          "--task", "t"], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "has not finished; nothing was pushed" in run.stderr and "pushed" not in run.stdout


def test_evaluate_models_names_a_swapped_folder_before_loading(tmp_path, tokenizer):
    import subprocess
    import sys

    from conftest import REPO

    AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    run = subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate_models.py"), "--test_files", str(tmp_path / "none.txt"),
                          "--teacher_model", str(tmp_path / "teacher"), "--implicit_model", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "r")],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "--implicit_model" in run.stderr and "holds a plain gpt2 model" in run.stderr, run.stderr[-800:]


def run_mind_reading(tmp_path, *extra):
    import os
    import subprocess
    import sys

    from conftest import REPO

    data = tmp_path / "data.txt"
    data.write_text((LINE + "\n") * 16)
    command = [sys.executable, str(REPO / "recipes" / "mind_reading.py"), "--dataset_name_or_path", str(data), "--eval_split", "none",
               "--teacher_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "student"), "--max_steps", "1",
               "--per_device_train_batch_size", "4", "--save_strategy", "no", "--use_cpu", "true", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


@pytest.fixture
def two_layer_teacher(tmp_path, tokenizer):
    AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def test_a_student_shallower_than_its_teacher_is_told_how_to_map_layers(tmp_path, two_layer_teacher):
    """The depth-mismatch error names the recipe field, with a value that works; that value trains."""
    student = "{model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}"
    refused = run_mind_reading(tmp_path, "--model_config", student)
    assert refused.returncode != 0 and "`teacher_layers: [2]`" in refused.stderr, refused.stderr[-1500:]
    trained = run_mind_reading(tmp_path, "--model_config", student, "--teacher_layers", "2")
    assert trained.returncode == 0, trained.stderr[-1500:]
    import json

    assert json.loads((tmp_path / "student" / "config.json").read_text())["teacher_layers"] == [2]


def test_a_student_with_another_tokenizer_than_its_teacher_stops(tmp_path, two_layer_teacher, tokenizer):
    other = build_digit_tokenizer_with_extra(tokenizer, tmp_path / "other_tokenizer")
    run = run_mind_reading(tmp_path, "--tokenizer_name_or_path", str(other), "--init_from_teacher", "true")
    assert run.returncode != 0 and "was trained with another tokenizer" in run.stderr and str(two_layer_teacher) in run.stderr, run.stderr[-1500:]
    assert not (tmp_path / "student" / "model.safetensors").exists()


def build_digit_tokenizer_with_extra(tokenizer, folder):
    import copy

    other = copy.deepcopy(tokenizer)
    other.add_tokens(["%"])
    other.save_pretrained(folder)
    return folder
