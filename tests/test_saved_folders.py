"""Saved folders across the move to one folder per method (issue 32's layout): folders saved by
the flat layout still load and answer as they did; folders saved now carry flat code that loads
through `trust_remote_code` where icot_hf is not installed; the old module paths still import."""

import json
import re
import shutil
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import icot_hf  # noqa: F401 (registers the Auto classes)
from conftest import REPO

BEFORE = REPO / "tests" / "fixtures" / "saved_before_layout"
EXPECTED = json.loads((BEFORE / "expected.json").read_text())
QUESTIONS = ["1 2 * 3 4", "5 6 7 * 8 9 1"]


def left_padded(tokenizer, texts):
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


def outputs_of(kind: str, model, tokenizer) -> dict:
    """What make_fixture.py recorded for each kind of folder, computed again."""
    if kind == "kd":
        return {"answers": model.answer(QUESTIONS, tokenizer)}
    if kind == "stepwise":
        batch = left_padded(tokenizer, [q + tokenizer.eos_token for q in QUESTIONS])
        with torch.no_grad():
            logits = model(**batch).logits
            generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
        return {"logit_sum": round(float(logits.double().sum()), 4), "generated": generated.tolist()}
    batch = left_padded(tokenizer, [model.prompt(q) for q in QUESTIONS])
    with torch.no_grad():
        return {"generated": model.generate(**batch, max_new_tokens=6, do_sample=False).tolist()}


REMOTE = """
import json, sys
sys.path = [p for p in sys.path if 'src' not in p]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, kind = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
assert 'icot_hf' not in sys.modules, 'icot_hf was imported'
exec(sys.argv[3])  # outputs_of and left_padded, as the test defines them
print(json.dumps(outputs_of(kind, model, tokenizer)))
if len(sys.argv) > 4:  # save again from the code the folder carried
    model.save_pretrained(sys.argv[4]); tokenizer.save_pretrained(sys.argv[4])
"""


def run_without_icot_hf(tmp_path, folder, kind, resave=None) -> dict:
    import inspect

    helpers = "QUESTIONS = %r\n" % QUESTIONS + inspect.getsource(left_padded) + inspect.getsource(outputs_of)
    args = [sys.executable, "-c", REMOTE, str(folder), kind, helpers] + ([str(resave)] if resave else [])
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(lines[-1])


def test_folders_saved_before_the_move_load_and_answer_as_they_did(tmp_path):
    for kind in ("kd", "stepwise", "coconut"):
        folder = tmp_path / kind
        shutil.copytree(BEFORE / kind, folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert type(model).__module__.startswith(f"icot_hf.{kind}."), type(model).__module__
        assert outputs_of(kind, model, AutoTokenizer.from_pretrained(folder)) == EXPECTED[kind], kind
        assert run_without_icot_hf(tmp_path, folder, kind) == EXPECTED[kind], kind


def test_folders_saved_now_carry_flat_code_that_loads_without_icot_hf(tmp_path):
    for kind in ("kd", "stepwise", "coconut"):
        model = AutoModelForCausalLM.from_pretrained(BEFORE / kind).eval()
        tokenizer = AutoTokenizer.from_pretrained(BEFORE / kind)
        folder = tmp_path / f"{kind}_now"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        code = sorted(p.name for p in folder.glob("*.py"))
        for name in code:
            text = (folder / name).read_text()
            assert not re.search(r"^\s*(from \.\.|from icot_hf|import icot_hf)", text, re.M), f"{kind}/{name} is not flat"
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModelForCausalLM"] == json.loads((BEFORE / kind / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
        for target in auto_map.values():
            assert (folder / f"{target.split('.')[0]}.py").exists(), (kind, target)
        again = tmp_path / f"{kind}_again"
        assert run_without_icot_hf(tmp_path, folder, kind, resave=again) == EXPECTED[kind], kind
        assert sorted(p.name for p in again.glob("*.py")) == code  # saved again from the carried code: the same files
        assert run_without_icot_hf(tmp_path, again, kind) == EXPECTED[kind], kind


def test_module_paths_from_before_the_move_still_import():
    import icot_hf.kd.modeling_icot
    import icot_hf.modeling_icot
    import icot_hf.stepwise.stepwise_trainer
    import icot_hf.trainers.stepwise_trainer
    from icot_hf.teacher import extract_teacher_states, generate_explicit
    from icot_hf.trainers import CoupledTrainer, MindReadingTrainer, StepwiseInternalizationTrainer

    assert icot_hf.modeling_icot is icot_hf.kd.modeling_icot
    assert icot_hf.trainers.stepwise_trainer is icot_hf.stepwise.stepwise_trainer
    assert extract_teacher_states is icot_hf.kd.teacher_states.extract_teacher_states
    assert generate_explicit is icot_hf.generation.generate_explicit
    assert CoupledTrainer is icot_hf.CoupledTrainer and MindReadingTrainer is icot_hf.MindReadingTrainer
    assert StepwiseInternalizationTrainer is icot_hf.StepwiseInternalizationTrainer
    for name in icot_hf.__all__:
        assert getattr(icot_hf, name) is not None, name
