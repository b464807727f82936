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
