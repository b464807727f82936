"""Import the checkpoints released with the paper's code into icot_hf models.

The authors released trained models for every task (ICoT-KD: github.com/da03/implicit_chain_of_thought,
ICoT-SI: github.com/da03/Internalize_CoT_Step_by_Step; links in their READMEs). Each component is
a folder of `config.json` (its `base_model`, e.g. "gpt2", `tokenizer_name`, and for the emulator
`mixture_size` and `softmax_temperature`) and `state_dict.bin` (`torch.save` of the module's state
dict: `base_model.*` is the base causal LM, plus `mlps.*` for the student and emulator and the
emulator's `mixture_components`, `rnn` (LSTM), `key_proj`, `query_proj`, `out_proj`).

`state_dict.bin` is a pickle. It is read with `torch.load(weights_only=True)` only, which builds
tensors and plain containers and refuses anything else, so a checkpoint someone sends cannot run
code here; a refused file raises `UnsafeCheckpointError` naming it.

What comes out: the teacher and an ICoT-SI model as plain causal LMs, the student and emulator as
`ImplicitCoTStudent`/`ImplicitCoTEmulator`, and the pair as `ImplicitCoTForCausalLM`; each records
the paper's sequence format (`icot_sequence_format: reference`) and where it came from
(`icot_imported_from`), so `save_pretrained`, `push_to_hub`, `answer()` and
`recipes/evaluate_models.py` treat it like a model trained here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .kd.modeling_icot import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent

KINDS = ("teacher", "student", "emulator", "stepwise")
FORMAT = "paper code: config.json + state_dict.bin (torch.save)"
# The base LM's buffers some transformers versions saved (GPT-2's causal mask): not weights.
BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")


class UnsafeCheckpointError(ValueError):
    """A state_dict.bin that is not a plain tensor checkpoint (refused unread)."""


def read_reference_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; a checkpoint of the paper's code is a folder of config.json and state_dict.bin")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if "base_model" not in config:
        raise ValueError(f"{path}: no 'base_model' field; this is not a config written by the paper's code (TeacherConfig, "
                         "StudentConfig, EmulatorConfig or ImplicitModelConfig)")
    return config


def load_reference_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The folder's state_dict.bin, read with torch.load(weights_only=True) and nothing else."""
    path = Path(folder) / "state_dict.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no state_dict.bin; a checkpoint of the paper's code is a folder of config.json and state_dict.bin")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused: not a plain tensor state dict that torch.load(weights_only=True) can read ({reason[:200]}); "
            "a checkpoint is never unpickled in full, since that could run code from the file"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UnsafeCheckpointError(f"{path}: refused: expected a dict of parameter name -> tensor, got {type(state).__name__}")
    return state


def _base_lm(config: dict, state: dict[str, torch.Tensor], base_model: str | None, folder) -> torch.nn.Module:
    """The base causal LM with the checkpoint's `base_model.*` weights; its shape from `base_model`
    (a Hub id such as "gpt2" or a local folder holding its config.json), its weights from the file."""
    name = base_model or config["base_model"]
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name))
    weights = {k[len("base_model."):]: v for k, v in state.items() if k.startswith("base_model.") and not BUFFERS.search(k)}
    if not weights:
        raise ValueError(f"{folder}/state_dict.bin: no base_model.* weights; this is not a checkpoint of the paper's code")
    expected = lm.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{folder}: weights do not fit the base model {name!r} ({'; '.join(wrong[:3])}); pass the base model it was "
                         "trained from (base_model=...)")
    missing, unexpected = lm.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and lm.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{folder}: the checkpoint does not match {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return lm


def _own_modules(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's/emulator's own modules under icot_hf's names."""
    out = {}
    for key, value in state.items():
        if key.startswith("base_model."):
            continue
        key = re.sub(r"^mlps\.", "state_mlps.", key)
        key = key.replace("mixture_components.weight", "mixture.weight")
        key = re.sub(r"^rnn\.(weight|bias)_(ih|hh)_l0$", r"lstm.\1_\2", key)
        out[key] = value
    return out


def _load_own(model, state, folder) -> None:
    own = _own_modules(state)
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.startswith("lm.")]
    if missing or unexpected:
        raise ValueError(f"{folder}: the checkpoint's modules do not match a {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def _record(model, folder, kind: str) -> None:
    model.config.icot_sequence_format = "reference"
    model.config.icot_imported_from = {"format": FORMAT, "kind": kind, "path": str(Path(folder).resolve())}


def detect_kind(folder: str | os.PathLike) -> str:
    """'student', 'emulator', or 'causal_lm' (a teacher or an ICoT-SI model: both are a bare base LM)."""
    keys = load_reference_state_dict(folder).keys()
    if any(k.startswith("rnn.") for k in keys):
        return "emulator"
    if any(k.startswith("mlps.") for k in keys):
        return "student"
    return "causal_lm"


def import_causal_lm(folder, kind: str = "teacher", base_model: str | None = None):
    """A reference teacher (ICoT-KD) or ICoT-SI model as a plain causal LM."""
    if kind not in ("teacher", "stepwise"):
        raise ValueError(f"kind must be 'teacher' or 'stepwise', got {kind!r}")
    config, state = read_reference_config(folder), load_reference_state_dict(folder)
    if any(k.startswith(("mlps.", "rnn.")) for k in state):
        raise ValueError(f"{folder}: this is a {detect_kind(folder)} checkpoint, not a {kind}; import it with import_{detect_kind(folder)}")
    lm = _base_lm(config, state, base_model, folder)
    _record(lm, folder, kind)
    return lm.eval()


def import_student(folder, base_model: str | None = None) -> ImplicitCoTStudent:
    config, state = read_reference_config(folder), load_reference_state_dict(folder)
    if not any(k.startswith("mlps.") for k in state) or any(k.startswith("rnn.") for k in state):
        raise ValueError(f"{folder}: not a mind-reading student checkpoint (no mlps.*, or an emulator's rnn.*)")
    lm = _base_lm(config, state, base_model, folder)
    student = ImplicitCoTStudent.from_base_model(lm)
    _load_own(student, state, folder)
    _record(student, folder, "student")
    return student.eval()


def import_emulator(folder, base_model: str | None = None) -> ImplicitCoTEmulator:
    config, state = read_reference_config(folder), load_reference_state_dict(folder)
    if not any(k.startswith("rnn.") for k in state):
        raise ValueError(f"{folder}: not a thought-emulator checkpoint (no rnn.* weights)")
    lm = _base_lm(config, state, base_model, folder)
    emulator = ImplicitCoTEmulator.from_base_model(lm, mixture_size=int(config.get("mixture_size", 1)),
                                                   softmax_temperature=float(config.get("softmax_temperature", 0.05)))
    _load_own(emulator, state, folder)
    _record(emulator, folder, "emulator")
    return emulator.eval()


def reference_tokenizer(folder, tokenizer_name: str | None = None):
    """The tokenizer the checkpoint names (`tokenizer_name`, "gpt2" for the released ones), or the one given."""
    name = tokenizer_name or read_reference_config(folder).get("tokenizer_name") or read_reference_config(folder)["base_model"]
    return AutoTokenizer.from_pretrained(name)


def import_coupled(student_folder, emulator_folder, tokenizer, base_model: str | None = None,
                   max_answer_tokens: int = 64) -> ImplicitCoTForCausalLM:
    """The coupled ICoT-KD model (emulator -> student), answering with `generate`/`answer()`.
    The separator is the tokenizer's eos, as in the paper's code."""
    student = import_student(student_folder, base_model)
    emulator = import_emulator(emulator_folder, base_model)
    separator = tokenizer.eos_token_id
    model = ImplicitCoTForCausalLM.from_emulator_and_student(emulator, student, separator_token_id=separator, pad_token_id=separator,
                                                             max_answer_tokens=max_answer_tokens)
    model.config.icot_sequence_format = "reference"
    model.config.icot_imported_from = {"format": FORMAT, "kind": "coupled", "student": str(Path(student_folder).resolve()),
                                       "emulator": str(Path(emulator_folder).resolve())}
    return model.eval()
