"""Speed benchmarks: inference (no CoT, explicit CoT, implicit CoT) at batch 1 and 64,
each stage's training step, and the overheads inside the implicit path.

    python benchmarks/bench.py --task_dir outputs/4x4_mult --test_file <4x4 test.txt> --output_dir results
    python benchmarks/bench.py --smoke --output_dir /tmp/bench   # tiny random models (CI)

Warm-up excluded, several repeats, median reported. Writes bench.json and bench.md.
Check `uptime` first: timings are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent, build_digit_tokenizer
from icot_hf.data import ICoTCollator, read_icot_text, tokenize_dataset
from icot_hf.evaluation import DirectAnswerer, ExplicitCoTAnswerer, ImplicitCoTAnswerer
from icot_hf.hooks import substitute_states
from icot_hf.multiplication import format_problem, sample_problems
from icot_hf.teacher import extract_teacher_states


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load_models(args):
    if args.smoke:
        tokenizer = build_digit_tokenizer()
        config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=256, eos_token_id=1, bos_token_id=1, pad_token_id=0)
        make = lambda: AutoModelForCausalLM.from_config(config).eval()  # noqa: E731
        implicit = ImplicitCoTForCausalLM.from_emulator_and_student(
            ImplicitCoTEmulator.from_base_model(make()), ImplicitCoTStudent.from_base_model(make()), 1, 0, max_answer_tokens=12
        ).eval()
        return tokenizer, {"no_cot": make(), "explicit_cot": make(), "implicit_cot": implicit}
    root = Path(args.task_dir)
    tokenizer = AutoTokenizer.from_pretrained(root / "teacher")
    return tokenizer, {
        "no_cot": AutoModelForCausalLM.from_pretrained(root / "no_cot").eval(),
        "explicit_cot": AutoModelForCausalLM.from_pretrained(root / "teacher").eval(),
        "implicit_cot": ImplicitCoTForCausalLM.from_pretrained(root / "coupled").eval(),
    }


def questions_for(args, digits: int) -> list[dict]:
    if args.test_file and not args.smoke:
        return read_icot_text(args.test_file)
    return [format_problem(a, b, digits) for a, b in sample_problems(digits, 128, seed=0)]


def bench_inference(tokenizer, models, rows, args) -> dict:
    answerers = {
        "no_cot": DirectAnswerer(models["no_cot"], tokenizer, max_new_tokens=40),
        "explicit_cot": ExplicitCoTAnswerer(models["explicit_cot"], tokenizer, max_new_tokens=200),
        "implicit_cot": ImplicitCoTAnswerer(models["implicit_cot"], tokenizer),
    }
    questions = [r["input"] for r in rows]
    out = {}
    for name, answer in answerers.items():
        out[name] = {}
        for batch_size in args.batch_sizes:
            batches = [questions[i : i + batch_size] for i in range(0, len(questions), batch_size)][: args.batches]
            seconds = [median_seconds(lambda b=b: answer(b), args.repeats) for b in batches]
            per_batch = statistics.median(seconds)
            out[name][str(batch_size)] = {"examples_per_second": batch_size / per_batch, "latency_ms": 1000 * per_batch}
    for b in map(str, args.batch_sizes):
        out.setdefault("ratios", {})[b] = {
            "implicit_over_no_cot": out["implicit_cot"][b]["examples_per_second"] / out["no_cot"][b]["examples_per_second"],
            "implicit_over_explicit": out["implicit_cot"][b]["examples_per_second"] / out["explicit_cot"][b]["examples_per_second"],
        }
    return out


def bench_overheads(tokenizer, models, rows, args) -> dict:
    """Emulator pass vs student prefill vs full generation; hooks vs a plain forward."""
    implicit = models["implicit_cot"]
    questions = [r["input"] for r in rows[: max(args.batch_sizes)]]
    from icot_hf.data import prompt_batch

    batch = prompt_batch(tokenizer, questions, implicit.config.separator_token_id, implicit.config.pad_token_id or 0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = torch.full((ids.shape[0],), ids.shape[1] - 1)
    with torch.no_grad():
        states = implicit.emulator(ids, mask, positions).predicted_states
        vectors = implicit.student.state_vectors(states, mapped=True)
        lm = implicit.student.lm
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        emulator_s = median_seconds(lambda: implicit.emulator(ids, mask, positions), args.repeats)
        generate_s = median_seconds(lambda: implicit.generate(ids, attention_mask=mask), args.repeats)
        plain_s = median_seconds(lambda: lm(ids, attention_mask=mask, position_ids=position_ids), args.repeats * 3)

        def hooked():
            with substitute_states(lm, positions, vectors, ids.shape[1]):
                lm(ids, attention_mask=mask, position_ids=position_ids)

        hooked_s = median_seconds(hooked, args.repeats * 3)
    return {
        "batch_size": ids.shape[0],
        "emulator_ms": 1000 * emulator_s,
        "student_prefill_plain_ms": 1000 * plain_s,
        "student_prefill_hooked_ms": 1000 * hooked_s,
        "hook_overhead_fraction": hooked_s / plain_s - 1,
        "generate_total_ms": 1000 * generate_s,
    }


def bench_training(tokenizer, models, rows, args) -> dict:
    """Samples/s of one optimizer step per stage at the preset's batch size."""
    from datasets import Dataset

    data = tokenize_dataset(Dataset.from_list(rows), tokenizer)
    batch_rows = [data[i % len(data)] for i in range(args.train_batch_size)]
    batch = ICoTCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)(batch_rows)
    teacher = models["explicit_cot"]
    implicit = models["implicit_cot"]
    s1 = batch["implicit_separators"][:, 0]

    def states():
        return extract_teacher_states(teacher, batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"])

    steps = {
        "teacher": (teacher, lambda: teacher(batch["explicit_input_ids"], attention_mask=batch["explicit_attention_mask"], labels=batch["explicit_labels"]).loss),
        "mind_reading": (implicit.student, lambda: implicit.student(batch["implicit_input_ids"], states(), attention_mask=batch["implicit_attention_mask"], separator_positions=s1, labels=batch["implicit_labels"]).loss),
        "emulator": (implicit.emulator, lambda: implicit.emulator(batch["implicit_input_ids"], batch["implicit_attention_mask"], s1, teacher_states=states()).loss),
        "coupled": (implicit, lambda: implicit(batch["implicit_input_ids"], batch["implicit_attention_mask"], s1, labels=batch["implicit_labels"]).loss),
    }
    out = {}
    for name, (model, loss_fn) in steps.items():
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = median_seconds(step, args.repeats)
        out[name] = {"samples_per_second": args.train_batch_size / seconds, "step_ms": 1000 * seconds}
        try:
            import resource

            out[name]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:
            pass
    return out


def bench_scaling(args) -> dict:
    """How cost grows with k (sequence length): untrained models of the preset's shape."""
    tokenizer = build_digit_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2 if args.smoke else 8, n_embd=32 if args.smoke else 128, n_head=2 if args.smoke else 4,
                        n_positions=1024, eos_token_id=1, bos_token_id=1, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = {}
    for k in args.scaling_digits:
        rows = [format_problem(a, b, k) for a, b in sample_problems(k, 16, seed=0)]
        from datasets import Dataset

        data = tokenize_dataset(Dataset.from_list(rows), tokenizer)
        batch = ICoTCollator(0)(data.to_list())
        with torch.no_grad():
            explicit = median_seconds(lambda: model(batch["explicit_input_ids"]), args.repeats)
            implicit = median_seconds(lambda: model(batch["implicit_input_ids"]), args.repeats)
        out[str(k)] = {"explicit_tokens": batch["explicit_input_ids"].shape[1], "implicit_tokens": batch["implicit_input_ids"].shape[1],
                       "explicit_forward_ms": 1000 * explicit, "implicit_forward_ms": 1000 * implicit}
    return out


def markdown(results: dict) -> str:
    lines = ["# icot_hf benchmarks", "", f"Machine: {results['machine']}", ""]
    for task, inference in results["inference"].items():
        lines += [f"## Inference: {task}", "", "| model | batch | examples/s | latency (ms) |", "|---|---|---|---|"]
        for name in ("no_cot", "explicit_cot", "implicit_cot"):
            for b, v in inference[name].items():
                lines.append(f"| {name} | {b} | {v['examples_per_second']:.1f} | {v['latency_ms']:.1f} |")
        for b, r in inference["ratios"].items():
            lines.append(f"\nBatch {b}: implicit/no-CoT = {r['implicit_over_no_cot']:.2f}x, implicit/explicit = {r['implicit_over_explicit']:.2f}x")
        lines.append("")
    lines += ["## Training step (samples/s)", "", "| stage | samples/s | step (ms) | peak RSS (MB) |", "|---|---|---|---|"]
    for name, v in results["training"].items():
        lines.append(f"| {name} | {v['samples_per_second']:.1f} | {v['step_ms']:.1f} | {v.get('peak_rss_mb', 0):.0f} |")
    o = results["overheads"]
    lines += ["", "## Inside the implicit path", "",
              f"Batch {o['batch_size']}: emulator {o['emulator_ms']:.1f} ms, student prefill {o['student_prefill_plain_ms']:.1f} ms plain / "
              f"{o['student_prefill_hooked_ms']:.1f} ms with hooks ({100 * o['hook_overhead_fraction']:+.1f}%), whole generate {o['generate_total_ms']:.1f} ms", "",
              "## Scaling with k (forward pass, batch 16)", "", "| k | explicit tokens | implicit tokens | explicit ms | implicit ms |", "|---|---|---|---|---|"]
    for k, v in results["scaling"].items():
        lines.append(f"| {k} | {v['explicit_tokens']} | {v['implicit_tokens']} | {v['explicit_forward_ms']:.1f} | {v['implicit_forward_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task_dir", default="outputs/4x4_mult")
    parser.add_argument("--test_file", default=None)
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument("--output_dir", default="results")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--batches", type=int, default=4, help="batches timed per batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--scaling_digits", type=int, nargs="+", default=[4, 5, 7, 9])
    parser.add_argument("--smoke", action="store_true", help="tiny random models, one repeat: checks the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.batches, args.repeats, args.train_batch_size, args.scaling_digits = [1, 8], 1, 1, 8, [2, 3]
    import os
    import platform

    torch.manual_seed(0)
    tokenizer, models = load_models(args)
    rows = questions_for(args, args.digits)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "inference": {Path(args.test_file).parent.name if args.test_file else f"{args.digits}x{args.digits}": bench_inference(tokenizer, models, rows, args)},
        "training": bench_training(tokenizer, models, rows, args),
        "overheads": bench_overheads(tokenizer, models, rows, args),
        "scaling": bench_scaling(args),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
