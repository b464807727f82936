"""Results of a reproduction run: JSON, a Markdown table in the paper's form, a plot of
accuracy against throughput (the paper's trade-off, one point per method) and, when ICoT-SI
saved its stages, the frontier: exact match against the CoT tokens a model still writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

# `make reproduce` with LANES=2 trains ICoT-SI (and Coconut) in one lane and these, one after another, in the other.
SECOND_LANE = ("no_cot", "mind_reading", "emulator", "coupled", "codi")
FIRST_LANE = ("stepwise", "coconut")
METHOD_NAMES = {"no_cot": "No CoT", "explicit_cot": "Explicit CoT (teacher)", "implicit_cot": "Implicit CoT (ICoT-KD)",
                "stepwise_cot": "Implicit CoT (ICoT-SI, stepwise)", "coconut": "Continuous thought (Coconut)",
                "codi": "Continuous thought (CODI)"}


def markdown_table(results: dict) -> str:
    """One table per evaluation set: accuracy and examples/s at each batch size."""
    lines = [f"# Results: {results.get('task', '')}", ""]
    settings = results.get("settings", {})
    if settings.get("device"):
        trained = sorted(set(settings.get("training_precision", {}).values()))
        lines += [f"Evaluated on {settings['device']}, {settings.get('threads', '?')} thread(s), in "
                  f"{settings.get('evaluation_precision', 'fp32')}; models trained in {', '.join(trained) or 'unrecorded precision'}.", ""]
    for eval_name, methods in results["evaluations"].items():
        batch_sizes = sorted({int(b) for m in methods.values() for b in m["throughput"]})
        lines.append(f"## {eval_name}")
        lines.append("")
        counted = any("cot_tokens_generated" in m for m in methods.values())  # results written before it was measured lack it
        header = ["Method", "Exact match"] + (["CoT tokens generated"] if counted else []) + \
                 [f"Examples/s (batch {b})" for b in batch_sizes] + ["Speed-up vs explicit (batch 1)"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        explicit = methods.get("explicit_cot", {}).get("throughput", {}).get("1")
        for key, entry in methods.items():
            row = [METHOD_NAMES.get(key, key), f"{100 * entry['accuracy']:.1f}% ({entry['num_examples']})"]
            if counted:  # a partly internalised ICoT-SI model still writes some of its chain of thought
                row.append(f"{entry['cot_tokens_generated']:.1f}" if "cot_tokens_generated" in entry else "-")
            for b in batch_sizes:
                value = entry["throughput"].get(str(b))
                row.append(f"{value:.1f}" if value is not None else "-")
            mine = entry["throughput"].get("1")
            row.append(f"{mine / explicit:.2f}x" if mine and explicit else "-")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if results.get("frontier"):
        lines += frontier_table(results)
    if results.get("stage_wall_seconds"):
        lines += ["## Wall time per stage (make reproduce)", "", "| Stage | Minutes |", "|---|---|"]
        lines += [f"| {name} | {seconds / 60:.1f} |" for name, seconds in results["stage_wall_seconds"].items()]
        times = results["stage_wall_seconds"]
        lines.append(f"| sum of the stages | {sum(times.values()) / 60:.1f} |")
        if results.get("stage_lanes", 1) >= 2:
            lines.append(f"| wall time, two lanes side by side | {two_lane_wall_seconds(times) / 60:.1f} |")
        lines.append("")
    if results.get("notes"):
        lines.append(results["notes"])
    return "\n".join(lines) + "\n"


def frontier_table(results: dict) -> list[str]:
    """ICoT-SI's models at the end of each removal stage: what they still write, how often they
    are right, and how fast they answer against the teacher (batch 1, the primary set)."""
    points = results["frontier"]
    primary = points[0]["primary_set"]
    teacher = results["evaluations"].get(primary, {}).get("explicit_cot", {})
    teacher_speed, teacher_cot = teacher.get("throughput", {}).get("1"), teacher.get("cot_tokens_generated")
    set_names = list(points[0]["by_set"])
    lines = ["## Frontier: ICoT-SI at the end of each removal stage", "",
             f"Each row is the model saved when a stage ended (its gate passed, or its step cap was hit); it writes the CoT "
             f"it has left, then the answer. CoT tokens: mean generated per answer on {Path(primary).name}"
             + (f" (the teacher writes {teacher_cot:.1f})" if teacher_cot else "") + "; examples/s at batch 1 on that set.", ""]
    header = ["CoT tokens removed", "CoT tokens generated"] + [f"Exact match ({Path(n).name})" for n in set_names] + \
             ["Examples/s (batch 1)", "vs teacher", "Examples seen", "Stage ended by"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        row = [f"{p['cot_tokens_removed']} / {p['cot_tokens_total']}", f"{p['cot_tokens_generated']:.1f}"]
        row += [f"{100 * p['by_set'][n]['exact_match']:.1f}%" for n in set_names]
        speed = p["examples_per_second_batch1"]
        row += [f"{speed:.1f}", f"{speed / teacher_speed:.2f}x" if teacher_speed else "-", f"{p['examples_seen']:,}", p["stage_ended_by"]]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def plot_frontier(results: dict, path: str | os.PathLike) -> None:
    """Exact match against CoT tokens generated: the ICoT-SI stages as a line, the other
    methods as points (no-CoT and ICoT-KD write none; the teacher writes all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["frontier"]
    set_names = list(points[0]["by_set"])
    fig, axes = plt.subplots(1, len(set_names), figsize=(5 * len(set_names), 4), squeeze=False)
    for ax, set_name in zip(axes[0], set_names):
        xs = [p["by_set"][set_name]["cot_tokens_generated"] for p in points]
        ys = [100 * p["by_set"][set_name]["exact_match"] for p in points]
        ax.plot(xs, ys, "o-", label="ICoT-SI, end of each stage")
        for key, entry in results["evaluations"].get(set_name, {}).items():
            if key == "stepwise_cot":
                continue  # the final ICoT-SI model is the frontier's last point
            ax.scatter(entry.get("cot_tokens_generated", 0.0), 100 * entry["accuracy"], s=70, marker="s", label=METHOD_NAMES.get(key, key))
        ax.set_xlabel("CoT tokens generated per answer")
        ax.set_ylabel("exact match (%)")
        ax.set_ylim(-5, 105)
        ax.set_title("/".join(Path(set_name).parts[-2:]) if "/" in set_name else set_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{results.get('task', '')}: accuracy against chain-of-thought length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def two_lane_wall_seconds(times: dict[str, int]) -> int:
    """What the stages take when ICoT-SI trains beside the no-CoT baseline and ICoT-KD's stages:
    the other stages one after another, plus the longer of the two lanes."""
    second = sum(times.get(name, 0) for name in SECOND_LANE)
    first = sum(times.get(name, 0) for name in FIRST_LANE)
    return sum(times.values()) - first - second + max(first, second)


def plot_accuracy_vs_throughput(results: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = list(results["evaluations"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, eval_name in zip(axes[0], names):
        for key, entry in results["evaluations"][eval_name].items():
            speed = entry["throughput"].get("1") or next(iter(entry["throughput"].values()))
            ax.scatter(speed, 100 * entry["accuracy"], s=60, label=METHOD_NAMES.get(key, key))
        # A legend, not text beside each point: methods at the same accuracy and similar speed
        # (the implicit and no-CoT models often are) would print their names over each other.
        ax.legend(loc="center right", fontsize="small")
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 3, 40, 200: not 3x10^0
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.set_xlabel("examples/s at batch 1 (log)")
        ax.set_ylabel("exact match (%)")
        ax.set_ylim(-5, 105)
        ax.set_title("/".join(Path(eval_name).parts[-2:]) if "/" in eval_name else eval_name)  # a file: its last two parts
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results.get('task', '')}: accuracy vs speed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md", "plot": output_dir / "accuracy_vs_throughput.png"}
    for path, text in ((paths["json"], json.dumps(results, indent=2)), (paths["markdown"], markdown_table(results))):
        temporary = path.with_name(path.name + ".tmp")  # a crash mid-write never leaves half a table
        temporary.write_text(text)
        os.replace(temporary, path)
    plot_accuracy_vs_throughput(results, paths["plot"])
    if results.get("frontier"):
        paths["frontier_plot"] = output_dir / "frontier.png"
        plot_frontier(results, paths["frontier_plot"])
    return paths
