"""Malformed-input sweep: every odd input from the "nothing lost" issue against the real entry
points, one line each (input | entry point | outcome), in a scratch folder.

A case passes when the entry point does what it should: works (a byte-order mark, a lone-CR
file, an unquoted `no`; `ok+TEXT`: and says TEXT, a warning), or stops with a one-line `error:`
naming the problem (no traceback), and no file of the user's (the `user/` folder: data files,
another tool's Trainer run, a finished run with the user's own README, a hand-made dataset)
changed: every file there is hashed before and after. Exit status 1 if any case does not.

Round 2 adds: concurrent launches into one folder, wrong folders as stages, another tool's run
under --rerun_if_changed, publishing offline, finished runs whose weights were damaged, a
checkpoint the run did not write, stale data, a LoRA coupled model loaded from elsewhere, a full
disk (a file-size limit) mid-checkpoint and mid-dataset, and the smaller inputs of that issue.

Round 3 ("nothing lost, round 3": every command all or nothing) adds, for each command that
writes, a run that fails midway (an input found bad or missing only once loading starts, a full
disk) and then the same command line again once the cause is fixed: the failure must leave what
was there before (a finished run byte for byte, no folder where there was none; a training run
cut by a full disk may keep its checkpoints, which its re-run resumes from) and the re-run must
end with the complete result. And each command killed (SIGKILL) at its writes, one kill per run
(scripts/kill_at_write.py numbers them: files opened for writing, safetensors and torch.save files
cut to half, folders made, renames into place): after each kill, every part of the result whose
marker is there must equal an uninterrupted run's, and the same command line run again must end
with the uninterrupted run's result (weights bit for bit, datasets' Arrow files, exact matches),
leaving no hidden file behind. Commands: conversion, made data, import of the paper's checkpoints,
evaluation, and the teacher, mind-reading (teacher states cached), ICoT-SI, Coconut and CODI
trainings with a checkpoint each step.

    python scripts/odd_input_sweep.py                         # everything; make proofs runs it
    python scripts/odd_input_sweep.py --parts midway kills --kills 4   # round 3, as make test runs it
    python scripts/odd_input_sweep.py --parts kills --kills 0  # every write of every command (~45 min)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
LINE = "1 2 * 3 4||3 6 + 0 4 8 #### 3 0 4 0"
TINY = "{model_type: gpt2, n_layer: 2, n_embd: 16, n_head: 2, n_positions: 64}"
SERIAL_CASES = 4  # build_cases' first cases: two re-runs into one teacher folder
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


def limited(max_bytes: int, command: list[str]) -> list[str]:
    """`command` (a Python script) with every file it writes capped at `max_bytes`, as a full disk
    would stop it: writes past the cap fail with EFBIG (SIGXFSZ ignored)."""
    launcher = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes})); sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    return [PY, "-c", launcher, *command[1:]]


def while_locked(folder: Path, command: list[str]) -> list[str]:
    """`command` run while another process holds `folder`'s run lock (a run in progress there)."""
    holder = (f"from pathlib import Path; import time; from icot_hf.run_record import lock_output_dir; "
              f"lock_output_dir(Path({str(folder)!r})); print(1, flush=True); time.sleep(300)")
    code = (f"import subprocess, sys\nholder = subprocess.Popen([sys.executable, '-c', {holder!r}], stdout=subprocess.PIPE, text=True)\n"
            f"holder.stdout.readline()\nrun = subprocess.run({[str(c) for c in command]!r}, capture_output=True, text=True)\n"
            "holder.kill()\nsys.stdout.write(run.stdout); sys.stderr.write(run.stderr); sys.exit(run.returncode)")
    return [PY, "-c", code]


def api(code: str) -> list[str]:
    """A Python API call, in its own process: `error:` plus the exception's message if it raises."""
    wrapped = (f"import sys\ntry:\n    exec({code!r})\nexcept (TypeError, ValueError) as e:\n    print(f'error: {{e}}', file=sys.stderr); sys.exit(2)\n")
    return [PY, "-c", wrapped]


def build_models(work: Path) -> None:
    """What every part reads: a small data set, a teacher, a student and an emulator trained on
    it (one step each), the compact GPT-2 tokenizer of the paper-checkpoint fixture."""
    data, teacher = work / "data", work / "teacher"
    stage = dict(capture_output=True, check=True)
    subprocess.run(script("make_multiplication.py", "--digits", 2, "--train_size", 64, "--valid_size", 8, "--test_size", 8, "--output_dir", data),
                   **stage)
    subprocess.run(train_on(data, teacher), **stage)
    kd = ["--dataset_name_or_path", data, "--teacher_name_or_path", teacher, *QUICK]
    subprocess.run(script("mind_reading.py", *kd, "--output_dir", work / "student"), **stage)
    subprocess.run(script("emulator.py", *kd, "--output_dir", work / "emulator"), **stage)
    fixture = REPO / "tests" / "fixtures" / "reference_trajectory"
    subprocess.run([PY, "-c", f"import sys; sys.path.insert(0, {str(fixture)!r}); from compact_tokenizer import build_compact_gpt2_tokenizer as b; "
                    f"b().save_pretrained({str(work / 'compact_tokenizer')!r})"], **stage)


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
    teacher = work / "teacher"
    # round 2: what a careful user or a security reviewer tries (the "nothing lost, round 2" issue)
    (user / "utf16le.txt").write_bytes(((LINE + "\n") * 4).encode("utf-16-le"))
    (user / "separator_in_question.txt").write_text(LINE + "\n" + "1 2 <|endoftext|> 3 4||3 6 + 0 4 8 #### 3 0 4 0\n")
    (user / "train.txt").write_text(LINE + "\n" + LINE.replace("1 2", "5 6") + "\n")
    (user / "test_overlap_mixed.txt").write_text(LINE + "\n" + "1 2 3 4 5 * 1 2 3 4 5||1 #### 2\n" + LINE.replace("1 2", "7 8") + "\n")
    (user / "empty_cot.txt").write_text(LINE + "\n" + "5 6 * 7 8|| #### 1 2\n")
    foreign_run = user / "other_tool_run"  # another tool's Trainer run
    (foreign_run / "checkpoint-500").mkdir(parents=True)
    (foreign_run / "checkpoint-500" / "trainer_state.json").write_text('{"global_step": 500}')
    for name, content in (("model.safetensors", "their weights"), ("config.json", "{}"), ("notes.txt", "mine")):
        (foreign_run / name).write_text(content)
    (foreign_run / "runs").mkdir()
    (foreign_run / "runs" / "events.out.tfevents").write_text("logs")
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"input": ["1 2 * 3 4"], "cot": ["3 6"], "answer": ["3 0 4 0"]})}).save_to_disk(str(user / "hand_made_data"))
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (work / f".converted.staging-{dead}-killed").mkdir()  # what a conversion killed mid-save left
    other_tokenizer = work / "other_tokenizer"
    subprocess.run([PY, "-c", f"from icot_hf import build_digit_tokenizer as b; t = b(); t.add_tokens(['%']); t.save_pretrained({str(other_tokenizer)!r})"],
                   check=True, capture_output=True)
    stage = dict(capture_output=True, check=True)
    subprocess.run(script("couple.py", "--dataset_name_or_path", data, "--student_name_or_path", work / "student", "--emulator_name_or_path",
                          work / "emulator", "--output_dir", work / "coupled_lora", "--use_peft", "true", *QUICK), **stage)
    import shutil

    shutil.copytree(teacher, user / "finished_teacher")  # a finished run the user wrote a README into
    (user / "finished_teacher" / "README.md").write_text("my own notes on this model\n")
    for name in ("truncated", "corrupted", "foreign_checkpoint"):
        shutil.copytree(teacher, work / name)
    weights = work / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    weights = work / "corrupted" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-64:] = b"\xff" * 64  # same size: NaNs where there were weights
    weights.write_bytes(bytes(blob))
    os.utime(weights, (0, 0))
    (work / "foreign_checkpoint" / "training_complete.json").unlink()  # an interrupted run ...
    (work / "foreign_checkpoint" / "checkpoint-9").mkdir()  # ... beside a checkpoint it did not write
    (work / "foreign_checkpoint" / "checkpoint-9" / "trainer_state.json").write_text('{"global_step": 9}')
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
        # round 2
        ("LoRA coupled model loaded from another directory", "AutoModelForCausalLM",
         api(f"import os; os.chdir('/'); {load_teacher}; m = AutoModelForCausalLM.from_pretrained({str(work / 'coupled_lora')!r}); "
             "assert len(m.answer(['1 2 * 3 4'], tok)) == 1"), "ok"),
        ("a second launch into a folder a run is using", "teacher.py",
         while_locked(work / "busy", train_on(data, work / "busy")), "is in use by another run (PID"),
        ("a teacher folder as ImplicitCoTForCausalLM", "ImplicitCoTForCausalLM.from_pretrained",
         api(f"{load_teacher}; icot_hf.ImplicitCoTForCausalLM.from_pretrained({str(teacher)!r})"), "teacher_name_or_path"),
        ("a teacher folder as ImplicitCoTStudent", "ImplicitCoTStudent.from_pretrained",
         api(f"{load_teacher}; icot_hf.ImplicitCoTStudent.from_pretrained({str(teacher)!r})"), "teacher_name_or_path"),
        ("the teacher as student and emulator", "couple.py",
         script("couple.py", "--dataset_name_or_path", data, "--student_name_or_path", teacher, "--emulator_name_or_path", teacher,
                "--output_dir", work / "out_couple", *QUICK), "teacher_name_or_path"),
        ("another tool's Trainer run, --rerun_if_changed", "teacher.py",
         train_on(data, user / "other_tool_run", "--rerun_if_changed", "true"), "holds no icot_hf run"),
        ("another tool's Trainer run, --overwrite_output_dir", "teacher.py",
         train_on(data, user / "other_tool_run", "--overwrite_output_dir", "true"), "holds no icot_hf run"),
        ("push.py offline, the user's README in the folder", "push.py",
         script("push.py", "--folder", user / "finished_teacher", "--repo_id", "me/x", "--stage", "teacher", "--task", "t"),
         "nothing local was changed"),
        ("--push_to_hub offline on a dataset script", "make_multiplication.py",
         script("make_multiplication.py", "--digits", 2, "--train_size", 8, "--valid_size", 2, "--test_size", 2, "--output_dir",
                work / "data_pushed", "--push_to_hub", "me/x"), "could not push to the Hub repo me/x"),
        ("a finished run whose weights were truncated", "teacher.py", train_on(data, work / "truncated"), "cannot be reused"),
        ("a finished run whose weights changed, same size", "teacher.py", train_on(data, work / "corrupted"), "cannot be reused"),
        ("a checkpoint the run did not write", "teacher.py", train_on(data, work / "foreign_checkpoint"), "not a checkpoint this run wrote"),
        ("a hand-made dataset where the pipeline makes data", "make_multiplication.py",
         script("make_multiplication.py", "--digits", 2, "--train_size", 8, "--output_dir", user / "hand_made_data", "--rerun_if_changed"),
         "neither reused nor replaced"),
        ("max_train_samples over the split's size", "teacher.py",
         train_on(data, work / "out_cap", "--max_train_samples", 128000), "ok+max_train_samples 128000 > the 64 examples"),
        ("--max_train_samples 0", "teacher.py", train_on(data, work / "out_zero", "--max_train_samples", 0), "max_train_samples must be >= 1"),
        ("answer() with a question over the context", "ImplicitCoTForCausalLM.answer",
         api(f"{load_teacher}; {implicit}; model.answer([' '.join(['7'] * 80)], tok)"), "the model's context"),
        ("answer([1234])", "ImplicitCoTForCausalLM.answer", api(f"{load_teacher}; {implicit}; model.answer([1234], tok)"), "answer()"),
        ("answer([None])", "ImplicitCoTForCausalLM.answer", api(f"{load_teacher}; {implicit}; model.answer([None], tok)"), "answer()"),
        ("answer(None)", "ImplicitCoTForCausalLM.answer", api(f"{load_teacher}; {implicit}; model.answer(None, tok)"), "answer()"),
        ("answer(batch_size=0)", "ImplicitCoTForCausalLM.answer",
         api(f"{load_teacher}; {implicit}; model.answer(['1 2 * 3 4'], tok, batch_size=0)"), "must be integers >= 1"),
        ("answer(num_beams=0)", "ImplicitCoTForCausalLM.answer",
         api(f"{load_teacher}; {implicit}; model.answer(['1 2 * 3 4'], tok, num_beams=0)"), "must be integers >= 1"),
        ("the separator's text inside a question", "teacher.py",
         train_on(user / "separator_in_question.txt", work / "out_sep"), "contains the separator token"),
        ("problems shared by train and test, a 5x5 line among 2x2", "convert_icot_text.py",
         script("convert_icot_text.py", "--train", user / "train.txt", "--test", user / "test_overlap_mixed.txt", "--output_dir", work / "converted"),
         "ok+shares 1 problem(s) with [train]"),
        ("an empty chain of thought, distillation", "mind_reading.py",
         script("mind_reading.py", "--dataset_name_or_path", user / "empty_cot.txt", "--teacher_name_or_path", teacher,
                "--output_dir", work / "out_empty", *QUICK), "empty chain of thought"),
        ("UTF-16LE without a byte-order mark", "teacher.py", train_on(user / "utf16le.txt", work / "out_u16"), "looks UTF-16"),
        ("a full disk mid-checkpoint (file-size limit)", "teacher.py",
         limited(30_000, train_on(data, work / "out_full", "--save_strategy", "steps", "--save_steps", 1)), "the disk filled up"),
        ("a full disk mid-dataset (file-size limit)", "make_multiplication.py",
         limited(30_000, script("make_multiplication.py", "--digits", 3, "--train_size", 5000, "--output_dir", work / "data_full",
                                "--text_dir", work / "text_full")), "the disk filled up"),
    ]


BAD_LINE = "1 2 * 3 4 3 0 4 0\n"  # no '||': found only when the data is read
COCONUT_YAML = ("c_thought: 1\nepochs_per_stage: 1\nmax_latent_stage: 2\nnum_train_epochs: 1\nlatent_init_token: '+'\n"
                "question_suffix: ''\nstep_suffix: ' +'\nanswer_prefix: '#### '\nmax_steps: 1\nper_device_train_batch_size: 2\n"
                "eval_strategy: 'no'\nsave_strategy: 'no'\nuse_cpu: true\nreport_to: none\n")


def rerun_cases(work: Path, data: Path, teacher: Path) -> list[dict]:
    """Round 3: (what, entry, command, the folder it writes, the error's fragment, how the cause is
    fixed, the command run again when it differs (the file-size limit lifted), whether the failure
    must leave the folder exactly as it was, the file that shows the result complete)."""
    import shutil

    rr = work / "rerun"
    rr.mkdir()
    good = (LINE + "\n") * 8
    for name in ("teacher_data.txt", "stepwise_data.txt", "test_file.txt"):
        (rr / name).write_text(LINE + "\n" + BAD_LINE + good)
    (rr / "train_file.txt").write_text(good)
    shutil.copytree(teacher, rr / "finished_teacher")
    (rr / "coconut.yaml").write_text(COCONUT_YAML)
    fix_file = lambda name: lambda: (rr / name).write_text(good)  # noqa: E731
    fix_folder = lambda source, target: lambda: shutil.copytree(source, target)  # noqa: E731
    train_full = train_on(data, rr / "teacher_full", "--save_strategy", "steps", "--save_steps", 1, "--max_steps", 2)
    data_full = script("make_multiplication.py", "--digits", 3, "--train_size", 5000, "--output_dir", rr / "data_full")
    marker = "training_complete.json"
    return [
        dict(what="fresh teacher over a finished run, a bad data line", entry="teacher.py",
             command=train_on(rr / "teacher_data.txt", rr / "finished_teacher", "--overwrite_output_dir", "true"),
             folder=rr / "finished_teacher", error="teacher_data.txt:2:", fix=fix_file("teacher_data.txt"), done=marker),
        dict(what="ICoT-SI over nothing, a bad data line", entry="stepwise.py",
             command=script("stepwise.py", "--dataset_name_or_path", rr / "stepwise_data.txt", "--teacher_name_or_path", teacher,
                            "--output_dir", rr / "stepwise", "--keep_best_fully_removed", "false", *QUICK),
             folder=rr / "stepwise", error="stepwise_data.txt:2:", fix=fix_file("stepwise_data.txt"), done=marker),
        dict(what="mind-reading student, its teacher not there yet", entry="mind_reading.py",
             command=script("mind_reading.py", "--dataset_name_or_path", data, "--teacher_name_or_path", rr / "late_teacher",
                            "--output_dir", rr / "student", *QUICK),
             folder=rr / "student", error="late_teacher", fix=fix_folder(teacher, rr / "late_teacher"), done=marker),
        dict(what="coupling, its emulator not there yet", entry="couple.py",
             command=script("couple.py", "--dataset_name_or_path", data, "--student_name_or_path", work / "student",
                            "--emulator_name_or_path", rr / "late_emulator", "--output_dir", rr / "coupled", *QUICK),
             folder=rr / "coupled", error="late_emulator", fix=fix_folder(work / "emulator", rr / "late_emulator"), done=marker),
        dict(what="Coconut, its teacher not there yet", entry="coconut.py",
             command=script("coconut.py", "--config", rr / "coconut.yaml", "--dataset_name_or_path", data,
                            "--teacher_name_or_path", rr / "late_coconut_teacher", "--output_dir", rr / "coconut"),
             folder=rr / "coconut", error="late_coconut_teacher", fix=fix_folder(teacher, rr / "late_coconut_teacher"), done=marker),
        dict(what="conversion, a bad line in the test file", entry="convert_icot_text.py",
             command=script("convert_icot_text.py", "--train", rr / "train_file.txt", "--test", rr / "test_file.txt",
                            "--output_dir", rr / "converted"),
             folder=rr / "converted", error="test_file.txt:2:", fix=fix_file("test_file.txt"), done="icot_data_settings.json"),
        dict(what="evaluation, a bad line in a --test_files file", entry="evaluate_models.py",
             command=script("evaluate_models.py", "--teacher_model", teacher, "--test_files", rr / "test_file_eval.txt",
                            "--max_examples", 4, "--max_examples_batch1", 2, "--batch_sizes", 2, "--output_dir", rr / "results"),
             folder=rr / "results", error="test_file_eval.txt:2:", fix=fix_file("test_file_eval.txt"), done="results.json",
             setup=lambda: (rr / "test_file_eval.txt").write_text(LINE + "\n" + BAD_LINE + good)),
        dict(what="made data, a full disk mid-dataset", entry="make_multiplication.py", command=limited(30_000, data_full),
             folder=rr / "data_full", error="the disk filled up", fix=lambda: None, again=data_full, done="icot_data_settings.json"),
        dict(what="teacher, a full disk mid-checkpoint", entry="teacher.py", command=limited(30_000, train_full),
             folder=rr / "teacher_full", error="the disk filled up", fix=lambda: None, again=train_full, unchanged=False, done=marker),
    ]


def kill_cases(work: Path, data: Path, teacher: Path) -> list[dict]:
    """Round 3's kills: each command killed at its k-th write (scripts/kill_at_write.py), then run
    again as it was. (what, entry, the command for a root folder it writes under, the parts of its
    result: marker -> what must equal an uninterrupted run's once the marker is there)."""
    text = work / "kill_inputs"
    text.mkdir()
    (text / "train.txt").write_text((LINE + "\n") * 8)
    (text / "test.txt").write_text((LINE + "\n") * 4)
    (text / "coconut.yaml").write_text(COCONUT_YAML.replace("max_steps: 1", "max_steps: 2"))
    two_steps = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "steps",
                 "--save_steps", "1", "--use_cpu", "true"]
    from_teacher = ["--dataset_name_or_path", data, "--teacher_name_or_path", teacher]
    reference = REPO / "tests" / "fixtures" / "reference_trajectory"
    weights = lambda folder: lambda root: hashes(root / folder, "model.safetensors")  # noqa: E731
    dataset = lambda root: hashes(root / "out", "*/*.arrow", "dataset_dict.json")  # noqa: E731
    trained = dict(marker="out/training_complete.json", result=weights("out"))
    return [
        dict(what="conversion", entry="convert_icot_text.py", parts=[dict(marker="out", result=dataset)],
             command=lambda root: script("convert_icot_text.py", "--train", text / "train.txt", "--test", text / "test.txt",
                                         "--output_dir", root / "out")),
        dict(what="made data", entry="make_multiplication.py", parts=[dict(marker="out", result=dataset)],
             command=lambda root: script("make_multiplication.py", "--digits", 2, "--train_size", 16, "--valid_size", 4,
                                         "--test_size", 4, "--output_dir", root / "out")),
        dict(what="import of the paper's checkpoints", entry="import_reference.py",
             parts=[dict(marker=f"out/{name}/icot_imported.json", result=weights(f"out/{name}")) for name in ("teacher", "coupled", "stepwise")],
             command=lambda root: script("import_reference.py", "--teacher", reference / "checkpoints" / "teacher",
                                         "--student", reference / "checkpoints" / "coupled" / "student",
                                         "--emulator", reference / "checkpoints" / "coupled" / "emulator",
                                         "--stepwise", reference / "checkpoints" / "stepwise", "--base_model", reference / "base_gpt2",
                                         "--tokenizer", work / "compact_tokenizer", "--output_dir", root / "out")),
        dict(what="evaluation", entry="evaluate_models.py", parts=[dict(marker="out/results.json", result=exact_matches)],
             command=lambda root: script("evaluate_models.py", "--dataset_name_or_path", data, "--teacher_model", teacher,
                                         "--no_cot_model", teacher, "--test_files", text / "test.txt", "--max_examples", 4,
                                         "--max_examples_batch1", 2, "--batch_sizes", 1, 2, "--output_dir", root / "out")),
        dict(what="teacher, a checkpoint each step", entry="teacher.py", parts=[trained],
             command=lambda root: train_on(data, root / "out", "--max_steps", 2, "--save_strategy", "steps", "--save_steps", 1)),
        dict(what="mind-reading student, teacher states cached", entry="mind_reading.py", parts=[trained],
             command=lambda root: script("mind_reading.py", *from_teacher, "--teacher_state_cache", root / "states",
                                         "--output_dir", root / "out", *two_steps)),
        dict(what="ICoT-SI, a checkpoint each step", entry="stepwise.py", parts=[trained],
             command=lambda root: script("stepwise.py", *from_teacher, "--keep_best_fully_removed", "false", "--output_dir", root / "out",
                                         *two_steps)),
        dict(what="Coconut, a checkpoint each step", entry="coconut.py", parts=[trained],
             command=lambda root: script("coconut.py", "--config", text / "coconut.yaml", *from_teacher, "--output_dir", root / "out",
                                         "--save_strategy", "steps", "--save_steps", 1)),
        dict(what="CODI, a checkpoint each step", entry="codi.py", parts=[trained],
             command=lambda root: script("codi.py", *from_teacher, "--num_latent", 1, "--answer_prefix", "", "--output_dir", root / "out",
                                         *two_steps)),
    ]


def hashes(folder: Path, *patterns: str) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()}


def exact_matches(root: Path) -> list | None:
    """Every exact match in an evaluation's results.json (the timings differ from run to run)."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in sorted(value.items()):
                found.append((key, item)) if key == "exact_match" else walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    try:
        walk(json.loads((root / "out" / "results.json").read_text()))
    except (OSError, ValueError):
        return None
    return found


def kill_points(events: int, spread: int) -> list[int]:
    """`spread` writes from the first to the last (the marker's), or every write (spread 0)."""
    return list(range(1, events + 1)) if spread <= 0 else sorted({round(1 + i * (events - 1) / max(spread - 1, 1)) for i in range(spread)})


def killed(case: dict, root: Path, at: int, events: Path | None = None) -> list[str]:
    command = case["command"](root)
    return [PY, str(REPO / "scripts" / "kill_at_write.py"), "--under", str(root), "--at", str(at),
            *(["--events", str(events)] if events else []), *command[1:]]


def kill_then_rerun(case: dict, root: Path, at: int, expected: list, attempt) -> tuple[bool, str]:
    """Kill `case` at write `at` under a fresh `root`; then judge what it left (each part of the
    result whose marker is there equals the uninterrupted run's) and the same command again (rc 0,
    every part equal to the uninterrupted run's, nothing hidden left behind)."""
    from icot_hf.run_record import LOCK_FILE

    root.mkdir(parents=True)
    first = attempt(killed(case, root, at))
    if first.returncode not in (-9, 137):
        return False, f"write {at}: not killed (exit {first.returncode}: {(first.stderr.strip().splitlines() or ['?'])[-1][:80]})"
    partial = [part["marker"] for part, want in zip(case["parts"], expected) if (root / part["marker"]).exists() and part["result"](root) != want]
    second = attempt(case["command"](root))
    wrong = [part["marker"] for part, want in zip(case["parts"], expected) if part["result"](root) != want]
    hidden = sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name != LOCK_FILE)  # the lock: a run's flock, kept
    if partial or wrong or hidden or second.returncode != 0 or "Traceback" in second.stderr:
        said = next((line for line in second.stderr.splitlines() if line.startswith("error:")), f"exit {second.returncode}")
        return False, f"write {at}: left a partial result {partial} | re-run: {said[:80]} differs {wrong} | left hidden {hidden[:3]}"
    return True, f"write {at}: re-run complete"


def fail_then_rerun(case: dict, attempt) -> tuple[bool, str]:
    """Run a round-3 case: the failure, what it left, the fix, the re-run. (good, one-line outcome)."""
    from icot_hf.run_record import LOCK_FILE

    if case.get("setup"):
        case["setup"]()
    folder = case["folder"]

    def state():
        return {k: v for k, v in snapshot(folder).items() if not k.endswith(LOCK_FILE)} if folder.exists() else None

    before = state()
    first = attempt(case["command"])
    failed = first.returncode != 0 and case["error"] in first.stderr and "Traceback" not in first.stderr
    left = state()
    kept = left == before if case.get("unchanged", True) else not (folder / case["done"]).exists()
    case["fix"]()
    second = attempt(case.get("again", case["command"]))
    done = second.returncode == 0 and (folder / case["done"]).exists() and "Traceback" not in second.stderr
    said = next((line for line in first.stderr.splitlines() if line.startswith("error:")), f"exit {first.returncode}")
    left_words = ("as it was" if left == before else f"{len(left or {})} file(s), was {len(before or {})}") if case.get("unchanged", True) \
        else ("no finished model" if kept else "a finished model?")
    outcome = (f"{said[:70]} | left: {left_words} | re-run: " + ("complete" if done else f"FAILED ({(second.stderr.strip().splitlines() or ['?'])[-1][:80]})"))
    return failed and kept and done, outcome


PARTS = ("inputs", "midway", "kills")


def main() -> int:
    parser = argparse.ArgumentParser(description="the odd-input sweep (see the module's docstring)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="inputs: rounds 1 and 2; midway: round 3's failures found late and full disks; kills: round 3's kills")
    parser.add_argument("--kills", type=int, default=6, help="writes each command is killed at, spread from its first to its last; 0: every write")
    options = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="odd_input_sweep_") as scratch:
        work = Path(scratch)
        build_models(work)
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env.pop("ICOT_HF_TRACEBACK", None)

        def run(command):
            return subprocess.run(command, capture_output=True, text=True, env=env, cwd=work, timeout=600)

        if "inputs" in options.parts:
            failures += inputs_part(work, run)
        data, teacher = work / "data", work / "teacher"
        if "midway" in options.parts:
            print(f"\n{'fails midway, then the same command again':55s} | {'entry point':30s} | failure | what it left | re-run")
            reruns = rerun_cases(work, data, teacher)
            with ThreadPoolExecutor(max_workers=2) as pool:
                judged = list(pool.map(lambda case: fail_then_rerun(case, run), reruns))
            for case, (good, outcome) in zip(reruns, judged):
                failures += not good
                print(f"{case['what']:55s} | {case['entry']:30s} | {'' if good else 'UNEXPECTED: '}{outcome}")
        if "kills" in options.parts:
            failures += kills_part(work, data, teacher, options.kills, run)
        left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name.endswith(".tmp") or ".staging-" in p.name)
        print(f"temporary or staging files left: {json.dumps(left) if left else 'none'}")
        failures += bool(left)
    print(f"{failures} case(s) did not behave" if failures else "every case behaved")
    return 1 if failures else 0


def inputs_part(work: Path, run) -> int:
    """Rounds 1 and 2: one line per odd input; the user's files hashed before and after."""
    failures = 0
    cases = build_cases(work)
    before = snapshot(work / "user")
    print(f"{'input':55s} | {'entry point':30s} | outcome")
    # the first cases re-run one teacher folder: one at a time; the rest touch folders of their
    # own and run two at a time (each is mostly a process importing torch and transformers)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [run(case[2]) for case in cases[:SERIAL_CASES]]
        runs += list(pool.map(lambda case: run(case[2]), cases[SERIAL_CASES:]))
    for (what, entry, command, expected), result in zip(cases, runs):
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if result.returncode == 0:
            said = expected.partition("+")[2]
            outcome = "ok" + (f" ({said})" if said and said in result.stdout + result.stderr else "")
            good = expected.startswith("ok") and (not said or said in result.stdout + result.stderr)
        else:
            outcome = error_lines[0] if error_lines else f"exit {result.returncode} without an error line"
            good = not expected.startswith("ok") and bool(error_lines) and expected in result.stderr
        if "Traceback" in result.stderr:
            outcome, good = f"raw traceback: {result.stderr.strip().splitlines()[-1]}", False
        failures += not good
        print(f"{what:55s} | {entry:30s} | {'' if good else 'UNEXPECTED: '}{outcome[:160]}")
    changed = sorted(k for k in set(before) | set(snapshot(work / "user")) if before.get(k) != snapshot(work / "user").get(k))
    print(f"user files changed: {json.dumps(changed) if changed else 'none'}")
    return failures + bool(changed)


def kills_part(work: Path, data: Path, teacher: Path, spread: int, run) -> int:
    """Round 3's kills: an uninterrupted run of each command lists its writes and its result; then
    the command is killed at each chosen write and run again (kill_then_rerun)."""
    failures = 0
    cases = kill_cases(work, data, teacher)
    with ThreadPoolExecutor(max_workers=2) as pool:
        def uninterrupted(index_case):
            index, case = index_case
            root, events = work / "kills" / f"{index}-whole", work / "kills" / f"{index}-writes.json"
            root.mkdir(parents=True)
            result = run(killed(case, root, 0, events))
            if result.returncode != 0:
                raise SystemExit(f"{case['what']}: the uninterrupted run failed: {result.stderr[-2000:]}")
            return json.loads(events.read_text()), [part["result"](root) for part in case["parts"]]

        wholes = list(pool.map(uninterrupted, enumerate(cases)))
        jobs = [(index, at) for index, (writes, _) in enumerate(wholes) for at in kill_points(len(writes), spread)]
        judged = list(pool.map(lambda job: kill_then_rerun(cases[job[0]], work / "kills" / f"{job[0]}-at-{job[1]}", job[1],
                                                           wholes[job[0]][1], run), jobs))
    print(f"\n{'killed at a write, then the same command again':55s} | {'entry point':30s} | writes | kills | outcome")
    for index, (case, (writes, _)) in enumerate(zip(cases, wholes)):
        mine = [(at, outcome) for (i, at), outcome in zip(jobs, judged) if i == index]
        bad = [text for _, (good, text) in mine if not good]
        failures += len(bad)
        print(f"{case['what']:55s} | {case['entry']:30s} | {len(writes):6d} | {len(mine):5d} | "
              + ("; ".join(f"UNEXPECTED: {text}" for text in bad) if bad else "each left a complete result or none; each re-run completed"))
    return failures


if __name__ == "__main__":
    sys.exit(main())
