"""Malformed-input sweep: every odd input from the "nothing lost" issue against the real entry
points, one line each (input | entry point | outcome), in a scratch folder.

A case passes when the entry point does what it should: works (a byte-order mark, a lone-CR
file, an unquoted `no`) or stops with a one-line `error:` naming the problem (no traceback), and
no file of the user's (the `user/` folder) changed. Exit status 1 if any case does not.

    python scripts/odd_input_sweep.py            # prints the table; tests/test_odd_input_sweep.py runs it
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
LINE = "1 2 * 3 4||3 6 + 0 4 8 #### 3 0 4 0"
TINY = "{model_type: gpt2, n_layer: 2, n_embd: 16, n_head: 2, n_positions: 64}"
QUICK = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true"]


FILE_CASES = (  # (input, the file in user/ the teacher recipe reads, expected outcome)
    ("UTF-8 byte-order mark", "bom.txt", "ok"),
    ("lone-CR line ends", "lone_cr.txt", "ok"),
    ("'####' twice in a line", "double_marker.txt", "double_marker.txt:2:"),
    ("a line without '||'", "no_separator.txt", "no_separator.txt:2:"),
    ("symbols outside the digit vocabulary", "letters.txt", "not in the tokenizer's vocabulary"),
    ("an empty data file", "empty.txt", "empty"),
    ("sequences over the model's context", "long.txt", "exceed the model's context"),
)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def script(name: str, *args) -> list[str]:
    folder = "recipes" if (REPO / "recipes" / name).exists() else "dataset_scripts"
    return [PY, str(REPO / folder / name), *map(str, args)]


def train_on(source, out, *extra) -> list[str]:
    """The teacher recipe, one tiny step of a tiny model, on `source` into `out`."""
    return script("teacher.py", "--dataset_name_or_path", source, "--output_dir", out, "--model_config", TINY, *QUICK, *extra)


def api(code: str) -> list[str]:
    """A Python API call, in its own process: `error:` plus the exception's message if it raises."""
    wrapped = (f"import sys\ntry:\n    exec({code!r})\nexcept (TypeError, ValueError) as e:\n    print(f'error: {{e}}', file=sys.stderr); sys.exit(2)\n")
    return [PY, "-c", wrapped]


def build_cases(work: Path) -> list[tuple[str, str, list[str], str]]:
    """(input, entry point, command, expected: 'ok' or a fragment of the error line)."""
    user, data = work / "user", work / "data"
    (user / "notes_folder").mkdir(parents=True)
    (user / "notes_folder" / "notes.txt").write_text("my notes\n")
    (user / "bom.txt").write_bytes(("\ufeff" + (LINE + "\n") * 8).encode("utf-8"))
    (user / "lone_cr.txt").write_bytes(((LINE + "\r") * 8).encode())
    (user / "double_marker.txt").write_text(LINE + "\n" + "1 2 * 3 4||3 6 #### 1 #### 3 0 4 0\n")
    (user / "no_separator.txt").write_text(LINE + "\n" + "1 2 * 3 4 3 0 4 0\n")
    (user / "letters.txt").write_text(LINE + "\n" + "1 2 * 3 x||3 6 + 0 4 8 #### 3 0 4 0\n")
    (user / "empty.txt").write_text("")
    (user / "long.txt").write_text("9 " * 40 + "* 9 9||" + "1 " * 40 + "#### 1 2\n")
    (user / "unquoted_no.yaml").write_text(f"dataset_name_or_path: {user / 'bom.txt'}\nmodel_config: {TINY}\noutput_dir: {work / 'out_no'}\n"
                                           "eval_strategy: no\nsave_strategy: no\nmax_steps: 1\nper_device_train_batch_size: 2\nuse_cpu: true\n")
    (user / "lora_list.yaml").write_text(f"dataset_name_or_path: {user / 'bom.txt'}\nmodel_config: {TINY}\noutput_dir: {work / 'out_lora'}\n"
                                         "use_peft: true\nlora_target_modules: [c_attn]\neval_strategy: 'no'\nsave_strategy: 'no'\nmax_steps: 1\n"
                                         "per_device_train_batch_size: 2\nuse_cpu: true\n")
    subprocess.run(script("make_multiplication.py", "--digits", 2, "--train_size", 64, "--valid_size", 8, "--test_size", 8, "--output_dir", data),
                   check=True, capture_output=True)
    teacher = work / "teacher"
    subprocess.run(train_on(data, teacher), check=True, capture_output=True)
    other_tokenizer = work / "other_tokenizer"
    subprocess.run([PY, "-c", f"from icot_hf import build_digit_tokenizer as b; t = b(); t.add_tokens(['%']); t.save_pretrained({str(other_tokenizer)!r})"],
                   check=True, capture_output=True)
    load_teacher = f"import icot_hf; from transformers import AutoTokenizer, AutoModelForCausalLM; tok = AutoTokenizer.from_pretrained({str(teacher)!r})"
    implicit = ("from icot_hf import ImplicitCoTEmulator as E, ImplicitCoTStudent as S, ImplicitCoTForCausalLM as C; "
                f"m = AutoModelForCausalLM.from_pretrained({str(teacher)!r}); "
                "model = C.from_emulator_and_student(E.from_base_model(m), S.from_base_model(m), tok.eos_token_id, tok.pad_token_id)")
    return [
        ("existing folder of the user's as --output_dir", "convert_icot_text.py",
         script("convert_icot_text.py", "--train", user / "bom.txt", "--output_dir", user / "notes_folder"), "not a saved dataset"),
        ("existing folder of the user's as --output_dir", "make_multiplication.py",
         script("make_multiplication.py", "--digits", 2, "--train_size", 8, "--output_dir", user / "notes_folder", "--overwrite"), "not a saved dataset"),
        ("re-run with a changed --learning_rate", "teacher.py",
         train_on(data, teacher, "--learning_rate", "1e-2"),
         "different settings"),
        ("re-run with the same settings", "teacher.py",
         train_on(data, teacher), "ok"),
        *[(what, "teacher.py", train_on(user / name, work / f"out_{name}"), expected) for what, name, expected in FILE_CASES],
        ("misspelt model_config key (n_layers)", "teacher.py",
         script("teacher.py", "--dataset_name_or_path", data, "--output_dir", work / "out_k", "--model_config", "{model_type: gpt2, n_layers: 2}", *QUICK),
         "'n_layers' is not a field"),
        ("mistyped local dataset path", "teacher.py",
         train_on(work / "dat", work / "out_p"), "dat"),
        ("eval_strategy: no, unquoted in YAML", "teacher.py", script("teacher.py", "--config", user / "unquoted_no.yaml"), "ok"),
        ("lora_target_modules as a YAML list", "teacher.py", script("teacher.py", "--config", user / "lora_list.yaml"), "ok"),
        ("student shallower than the teacher, no teacher_layers", "mind_reading.py",
         script("mind_reading.py", "--dataset_name_or_path", data, "--teacher_name_or_path", teacher, "--output_dir", work / "out_d",
                "--model_config", "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}", *QUICK), "teacher_layers: [1]"),
        ("student tokenizer differs from the teacher's", "mind_reading.py",
         script("mind_reading.py", "--dataset_name_or_path", data, "--teacher_name_or_path", teacher, "--output_dir", work / "out_t",
                "--tokenizer_name_or_path", other_tokenizer, "--init_from_teacher", "true", *QUICK), "another tokenizer"),
        ("--implicit_model pointing at a teacher", "evaluate_models.py",
         script("evaluate_models.py", "--dataset_name_or_path", data, "--teacher_model", teacher, "--implicit_model", teacher,
                "--output_dir", work / "results"), "holds a plain gpt2 model"),
        ("push.py on an unfinished folder", "push.py",
         script("push.py", "--folder", user / "notes_folder", "--repo_id", "me/x", "--stage", "teacher", "--task", "t"), "has not finished"),
        ("answer() given one string", "ImplicitCoTForCausalLM.answer", api(f"{load_teacher}; {implicit}; model.answer('1 2 * 3 4', tok)"),
         "takes a list of questions"),
        ("answer() given an empty question", "ImplicitCoTForCausalLM.answer", api(f"{load_teacher}; {implicit}; model.answer([''], tok)"), "empty"),
    ]


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="odd_input_sweep_") as scratch:
        work = Path(scratch)
        cases = build_cases(work)
        before = snapshot(work / "user")
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env.pop("ICOT_HF_TRACEBACK", None)
        print(f"{'input':55s} | {'entry point':30s} | outcome")
        for what, entry, command, expected in cases:
            run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work, timeout=600)
            error_lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
            if run.returncode == 0:
                outcome, good = "ok", expected == "ok"
            else:
                outcome = error_lines[0] if error_lines else f"exit {run.returncode} without an error line"
                good = expected != "ok" and bool(error_lines) and expected in run.stderr
            if "Traceback" in run.stderr:
                outcome, good = f"raw traceback: {run.stderr.strip().splitlines()[-1]}", False
            failures += not good
            print(f"{what:55s} | {entry:30s} | {'' if good else 'UNEXPECTED: '}{outcome[:160]}")
        changed = sorted(k for k in set(before) | set(snapshot(work / "user")) if before.get(k) != snapshot(work / "user").get(k))
        print(f"user files changed: {json.dumps(changed) if changed else 'none'}")
        failures += bool(changed)
    print(f"{failures} case(s) did not behave" if failures else "every case behaved")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
