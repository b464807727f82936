"""Speed benchmarks: inference (no CoT, explicit CoT, implicit CoT and, when trained,
stepwise ICoT-SI) at batch 1 and 64 per task, each stage's training step with its peak
memory, scaling with the number of digits, and the overheads inside the implicit path.

    python benchmarks/bench.py --task_dirs outputs/4x4_mult outputs/5x5_mult \
        --test_files <4x4 test.txt> <5x5 test.txt> --output_dir results
    python benchmarks/bench.py --smoke --output_dir /tmp/bench   # tiny random models (CI)

Warm-up excluded, several repeats, median reported. Writes bench.json and bench.md, with
the bars of the benchmark issue marked met or missed. Training, overheads and scaling use
the first task. Check `uptime` first: timings are only comparable on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent, build_digit_tokenizer
from icot_hf.data import ICoTCollator, read_icot_text, tokenize_dataset
from icot_hf.evaluation import DirectAnswerer, ExplicitCoTAnswerer, ImplicitCoTAnswerer
from icot_hf.hooks import substitute_states
from icot_hf.multiplication import format_problem, sample_problems
from icot_hf.kd.teacher_states import extract_teacher_states


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load_models(args, task_dir: str | None):
    if args.smoke:
        tokenizer = build_digit_tokenizer()
        config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=256, eos_token_id=1, bos_token_id=1, pad_token_id=0)
        make = lambda: AutoModelForCausalLM.from_config(config).eval()  # noqa: E731
        implicit = ImplicitCoTForCausalLM.from_emulator_and_student(
            ImplicitCoTEmulator.from_base_model(make()), ImplicitCoTStudent.from_base_model(make()), 1, 0, max_answer_tokens=12
        ).eval()
        return tokenizer, {"no_cot": make(), "explicit_cot": make(), "implicit_cot": implicit}
    root = Path(task_dir)
    tokenizer = AutoTokenizer.from_pretrained(root / "teacher")
    models = {
        "no_cot": AutoModelForCausalLM.from_pretrained(root / "no_cot").eval(),
        "explicit_cot": AutoModelForCausalLM.from_pretrained(root / "teacher").eval(),
        "implicit_cot": ImplicitCoTForCausalLM.from_pretrained(root / "coupled").eval(),
    }
    if (root / "stepwise" / "training_complete.json").exists():
        models["stepwise_cot"] = AutoModelForCausalLM.from_pretrained(root / "stepwise").eval()
    return tokenizer, models


def questions_for(args, test_file: str | None, digits: int) -> list[dict]:
    if test_file and not args.smoke:
        return read_icot_text(test_file)
    return [format_problem(a, b, digits) for a, b in sample_problems(digits, 128, seed=0)]


def bench_inference(tokenizer, models, rows, args) -> dict:
    answerers = {
        "no_cot": DirectAnswerer(models["no_cot"], tokenizer, max_new_tokens=40),
        "explicit_cot": ExplicitCoTAnswerer(models["explicit_cot"], tokenizer, max_new_tokens=200),
        "implicit_cot": ImplicitCoTAnswerer(models["implicit_cot"], tokenizer),
    }
    if "stepwise_cot" in models:  # `input S S answer S`: the explicit answerer with an empty CoT
        answerers["stepwise_cot"] = ExplicitCoTAnswerer(models["stepwise_cot"], tokenizer, max_new_tokens=40)
    questions = [r["input"] for r in rows]
    out = {name: {} for name in answerers}
    names = list(answerers)
    for batch_size in args.batch_sizes:
        # At least --min_examples examples per size: a handful of batch-1 rows is too noisy.
        count = max(args.batches, math.ceil(args.min_examples / batch_size))
        batches = [questions[i : i + batch_size] for i in range(0, len(questions), batch_size)][:count]
        for answer in answerers.values():
            answer(batches[0])  # warm-up
        # Methods interleaved batch by batch, in an order that rotates: machine drift over
        # the run then lands on every method alike instead of on whichever ran last.
        seconds = {name: [] for name in names}
        for j, batch in enumerate(batches):
            for name in names[j % len(names) :] + names[: j % len(names)]:
                seconds[name].append(median_seconds(lambda: answerers[name](batch), args.repeats, warmup=0))
        for name in names:
            per_batch = statistics.median(seconds[name])
            out[name][str(batch_size)] = {"examples_per_second": batch_size / per_batch, "latency_ms": 1000 * per_batch}
    speed = lambda name, b: out[name][b]["examples_per_second"]  # noqa: E731
    for b in map(str, args.batch_sizes):
        ratios = out.setdefault("ratios", {})[b] = {
            "implicit_over_no_cot": speed("implicit_cot", b) / speed("no_cot", b),
            "implicit_over_explicit": speed("implicit_cot", b) / speed("explicit_cot", b),
        }
        if "stepwise_cot" in out:
            ratios.update(stepwise_over_no_cot=speed("stepwise_cot", b) / speed("no_cot", b), stepwise_over_explicit=speed("stepwise_cot", b) / speed("explicit_cot", b))
    return out


def direct_hook_seconds(hooked, repeats: int) -> float:
    """Median time spent in the hooks' own work per hooked pass: arming and disarming the
    hooks plus every substitution, timed from inside. End-to-end pairs on a busy 2-core
    machine resolve a few percent at best (see the plain-vs-plain control); this does not
    depend on that noise, though it cannot see indirect costs such as cache misses."""
    import icot_hf.hooks as hooks

    spent: list[float] = []
    original_substitute, original_edit = hooks.substitute_rows, hooks.edit_layer_inputs

    def timed_substitute(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original_substitute(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    @contextmanager
    def timed_edit(*args, **kwargs):
        started = time.perf_counter()
        with original_edit(*args, **kwargs) as layers:
            spent.append(time.perf_counter() - started)
            yield layers
            started = time.perf_counter()
        spent.append(time.perf_counter() - started)

    per_pass = []
    hooks.substitute_rows, hooks.edit_layer_inputs = timed_substitute, timed_edit
    try:
        for _ in range(max(repeats, 1)):
            spent.clear()
            hooked()
            per_pass.append(sum(spent))
    finally:
        hooks.substitute_rows, hooks.edit_layer_inputs = original_substitute, original_edit
    return statistics.median(per_pass)


def batch1_weight_bound(models, rows, tokenizer) -> dict:
    """At batch 1 a forward pass reads every weight it uses once, and on a CPU that read, not the
    arithmetic, is most of its time. A no-CoT answer of n tokens reads the decoder layers and the
    output layer n times (prefill and n - 1 steps); the implicit answer reads the student's as often,
    plus once each the emulator's decoder layers, the emulator's own per-layer modules (state MLPs, LSTM cell, key, query and
    output projections) and the student's state MLPs. The ratio of those reads estimates the implicit /
    no-CoT speed at batch 1 when weights come from memory (measured runs land near it, a little above
    where some weights stay in cache)."""
    from icot_hf.hooks import get_decoder_layers

    implicit = models["implicit_cot"]
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    emulator, student = implicit.emulator, implicit.student
    emulator_decoder = count(get_decoder_layers(emulator.lm))  # the emulator's pass makes no logits
    decoder = count(get_decoder_layers(student.lm)) + student.lm.get_output_embeddings().weight.numel()
    modules = count(emulator) - count(emulator.lm)
    mlps = count(student) - count(student.lm)
    answer_tokens = len(tokenizer(" " + rows[0]["answer"], add_special_tokens=False)["input_ids"]) + 1  # digits and the separator
    no_cot_reads = answer_tokens * decoder
    estimate = no_cot_reads / (no_cot_reads + emulator_decoder + modules + mlps)
    return {"decoder_params": decoder, "emulator_decoder_params": emulator_decoder, "emulator_module_params": modules,
            "student_state_mlp_params": mlps, "answer_tokens": answer_tokens, "implicit_over_no_cot_estimate": estimate}


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

        def plain():
            lm(ids, attention_mask=mask, position_ids=position_ids)

        def hooked():
            with substitute_states(lm, positions, vectors, ids.shape[1]):
                lm(ids, attention_mask=mask, position_ids=position_ids)

        # Paired ratios in ABBA order (plain first in half the pairs, hooked first in the
        # other half), so drift and whichever-runs-second effects cancel; each sample is
        # several passes. The A/A pairs (plain vs plain, same protocol) give the noise floor.
        def timed(fn):
            started = time.perf_counter()
            for _ in range(args.passes_per_sample):
                fn()
            return time.perf_counter() - started

        pairs, control = [], []
        for i in range(max(20 * args.repeats, 2)):
            if i % 2:
                hooked_t, plain_t = timed(hooked), timed(plain)
            else:
                plain_t, hooked_t = timed(plain), timed(hooked)
            pairs.append((plain_t, hooked_t))
            control.append(timed(plain) / timed(plain))
        direct = direct_hook_seconds(hooked, args.repeats * 10)
        plain_s = statistics.median(p for p, _ in pairs) / args.passes_per_sample
        hooked_s = statistics.median(h for _, h in pairs) / args.passes_per_sample
        ratios = sorted(h / p for p, h in pairs)
        overhead = statistics.median(ratios) - 1
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "batch_size": ids.shape[0],
        "emulator_ms": 1000 * emulator_s,
        "student_prefill_plain_ms": 1000 * plain_s,
        "student_prefill_hooked_ms": 1000 * hooked_s,
        "hook_overhead_fraction": overhead,
        "hook_overhead_interquartile": [quartiles[0] - 1, quartiles[2] - 1],
        "hook_overhead_pairs": len(pairs),
        "plain_vs_plain_fraction": statistics.median(control) - 1,
        "hook_direct_ms": 1000 * direct,
        "hook_direct_fraction": direct / plain_s,
        "generate_total_ms": 1000 * generate_s,
        "batch1_weight_reads": batch1_weight_bound(models, rows, tokenizer),
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

        reset_peak_memory()
        seconds = median_seconds(step, args.repeats)
        out[name] = {"samples_per_second": args.train_batch_size / seconds, "step_ms": 1000 * seconds, "peak_memory_mb": peak_memory_mb()}
    return out


def reset_peak_memory() -> None:
    """Start a new peak: CUDA's allocator stats on a GPU; on Linux CPUs the process's
    high-water RSS mark (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


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

        def train_step(ids):
            model(ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)

        explicit_train = median_seconds(lambda: train_step(batch["explicit_input_ids"]), args.repeats)
        implicit_train = median_seconds(lambda: train_step(batch["implicit_input_ids"]), args.repeats)
        out[str(k)] = {"explicit_tokens": batch["explicit_input_ids"].shape[1], "implicit_tokens": batch["implicit_input_ids"].shape[1],
                       "explicit_forward_ms": 1000 * explicit, "implicit_forward_ms": 1000 * implicit,
                       "explicit_train_step_ms": 1000 * explicit_train, "implicit_train_step_ms": 1000 * implicit_train}
    return out


METHODS = ("no_cot", "explicit_cot", "implicit_cot", "stepwise_cot")


def check_bars(results: dict) -> list[tuple[str, float, bool]]:
    """The benchmark issue's bars: (what, measured value, met?)."""
    bars = []
    for task, inference in results["inference"].items():
        ratios = inference["ratios"].get("1")
        if ratios:
            bars.append((f"{task}: implicit/no-CoT examples/s at batch 1 >= 0.7x", ratios["implicit_over_no_cot"], ratios["implicit_over_no_cot"] >= 0.7))
            bars.append((f"{task}: implicit/explicit examples/s at batch 1 >= 4x", ratios["implicit_over_explicit"], ratios["implicit_over_explicit"] >= 4))
        implicit = inference["implicit_cot"]
        if "1" in implicit and "64" in implicit:
            gain = implicit["64"]["examples_per_second"] / implicit["1"]["examples_per_second"]
            bars.append((f"{task}: implicit batch 64 / batch 1 examples/s >= 20x", gain, gain >= 20))
    overhead, direct = results["overheads"]["hook_overhead_fraction"], results["overheads"]["hook_direct_fraction"]
    bars.append(("hook substitution cost vs a plain forward < 5% (end to end, paired median)", overhead, overhead < 0.05))
    bars.append(("hook substitution cost vs a plain forward < 5% (time inside the hooks)", direct, direct < 0.05))
    return bars


def markdown(results: dict) -> str:
    lines = ["# icot_hf benchmarks", "", f"Machine: {results['machine']}", ""]
    for task, inference in results["inference"].items():
        lines += [f"## Inference: {task}", "", "| model | batch | examples/s | latency (ms) |", "|---|---|---|---|"]
        for name in METHODS:
            for b, v in inference.get(name, {}).items():
                lines.append(f"| {name} | {b} | {v['examples_per_second']:.1f} | {v['latency_ms']:.1f} |")
        for b, r in inference["ratios"].items():
            extra = "".join(f", {k.replace('_over_', '/')} = {v:.2f}x" for k, v in r.items() if k.startswith("stepwise"))
            lines.append(f"\nBatch {b}: implicit/no-CoT = {r['implicit_over_no_cot']:.2f}x, implicit/explicit = {r['implicit_over_explicit']:.2f}x{extra}")
        lines.append("")
    lines += ["## Training step", "", "| stage | samples/s | step (ms) | peak memory (MB) |", "|---|---|---|---|"]
    for name, v in results["training"].items():
        memory = v.get("peak_memory_mb")
        lines.append(f"| {name} | {v['samples_per_second']:.1f} | {v['step_ms']:.1f} | {'-' if memory is None else f'{memory:.0f}'} |")
    o = results["overheads"]
    lines += ["", "## Inside the implicit path", "",
              f"Batch {o['batch_size']}: emulator {o['emulator_ms']:.1f} ms, student prefill {o['student_prefill_plain_ms']:.1f} ms plain / "
              f"{o['student_prefill_hooked_ms']:.1f} ms with hooks ({100 * o['hook_overhead_fraction']:+.1f}%, interquartile "
              f"{100 * o['hook_overhead_interquartile'][0]:+.1f}% to {100 * o['hook_overhead_interquartile'][1]:+.1f}% over {o['hook_overhead_pairs']} ABBA pairs; "
              f"plain vs plain under the same protocol {100 * o['plain_vs_plain_fraction']:+.1f}%); time inside the hooks (arming, "
              f"disarming, substitutions) {o['hook_direct_ms']:.2f} ms = {100 * o['hook_direct_fraction']:.1f}% of the plain prefill; "
              f"whole generate {o['generate_total_ms']:.1f} ms", ""]
    w = o.get("batch1_weight_reads")
    if w:
        lines += [f"Weights read per answer at batch 1 ({w['answer_tokens']} answer tokens): the student's decoder layers and "
                  f"output layer, {w['decoder_params'] / 1e6:.2f}M parameters, once per token (as the no-CoT model's), plus once each the emulator's decoder "
                  f"({w['emulator_decoder_params'] / 1e6:.2f}M), the emulator's own modules ({w['emulator_module_params'] / 1e6:.2f}M) and the "
                  f"student's state MLPs ({w['student_state_mlp_params'] / 1e6:.2f}M): if every read came from memory, implicit / no-CoT "
                  f"speed at batch 1 would be about {w['implicit_over_no_cot_estimate']:.2f}x.", ""]
    lines += [
              "## Scaling with k (untrained model of the preset's shape, batch 16)", "",
              "| k | explicit tokens | implicit tokens | explicit forward ms | implicit forward ms | explicit train step ms | implicit train step ms |",
              "|---|---|---|---|---|---|---|"]
    for k, v in results["scaling"].items():
        lines.append(f"| {k} | {v['explicit_tokens']} | {v['implicit_tokens']} | {v['explicit_forward_ms']:.1f} | {v['implicit_forward_ms']:.1f} | "
                     f"{v['explicit_train_step_ms']:.1f} | {v['implicit_train_step_ms']:.1f} |")
    lines += ["", "## Bars", "", "| bar | measured | met |", "|---|---|---|"]
    for what, value, met in check_bars(results):
        lines.append(f"| {what} | {value:.3f} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task_dirs", nargs="+", default=["outputs/4x4_mult"], help="folders with teacher/, no_cot/, coupled/ (and stepwise/)")
    parser.add_argument("--test_files", nargs="*", default=[], help="one ICoT text file per task dir (else sampled problems)")
    parser.add_argument("--output_dir", default="results")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--batches", type=int, default=4, help="batches timed per batch size")
    parser.add_argument("--min_examples", type=int, default=32, help="examples timed at least, per batch size")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--passes_per_sample", type=int, default=3, help="forward passes per timed sample of the hook overhead")
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--scaling_digits", type=int, nargs="+", default=[4, 5, 7, 9])
    parser.add_argument("--smoke", action="store_true", help="tiny random models, one repeat: checks the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.task_dirs, args.test_files = [None], []
        args.batch_sizes, args.batches, args.repeats, args.train_batch_size, args.scaling_digits = [1, 8], 1, 1, 8, [2, 3]
        args.min_examples = 1
    if args.test_files and len(args.test_files) != len(args.task_dirs):
        parser.error(f"--test_files needs one file per --task_dirs entry ({len(args.task_dirs)}), got {len(args.test_files)}")
    import os
    import platform

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "inference": {},
    }
    for index, task_dir in enumerate(args.task_dirs):
        torch.manual_seed(0)
        test_file = args.test_files[index] if args.test_files else None
        digits = int(Path(task_dir).name[0]) if task_dir and Path(task_dir).name[:1].isdigit() else 4
        tokenizer, models = load_models(args, task_dir)
        rows = questions_for(args, test_file, digits)
        name = Path(test_file).parent.name if test_file else (Path(task_dir).name if task_dir else f"{digits}x{digits}")
        print(f"inference: {name}", flush=True)
        results["inference"][name] = bench_inference(tokenizer, models, rows, args)
        if index == 0:
            print("training steps, overheads", flush=True)
            results["training"] = bench_training(tokenizer, models, rows, args)
            results["overheads"] = bench_overheads(tokenizer, models, rows, args)
    print("scaling", flush=True)
    results["scaling"] = bench_scaling(args)
    results["bars"] = [{"bar": what, "measured": value, "met": met} for what, value, met in check_bars(results)]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
