"""Results of a reproduction run: JSON, a Markdown table in the paper's form, and a plot
of accuracy against throughput (the paper's trade-off, one point per method)."""

from __future__ import annotations

import json
import os
from pathlib import Path

# `make reproduce` with LANES=2 trains ICoT-SI in one lane and these, one after another, in the other.
SECOND_LANE = ("no_cot", "mind_reading", "emulator", "coupled")
METHOD_NAMES = {"no_cot": "No CoT", "explicit_cot": "Explicit CoT (teacher)", "implicit_cot": "Implicit CoT (ICoT-KD)",
                "stepwise_cot": "Implicit CoT (ICoT-SI, stepwise)"}


def markdown_table(results: dict) -> str:
    """One table per evaluation set: accuracy and examples/s at each batch size."""
    lines = [f"# Results: {results.get('task', '')}", ""]
    for eval_name, methods in results["evaluations"].items():
        batch_sizes = sorted({int(b) for m in methods.values() for b in m["throughput"]})
        lines.append(f"## {eval_name}")
        lines.append("")
        header = ["Method", "Exact match"] + [f"Examples/s (batch {b})" for b in batch_sizes] + ["Speed-up vs explicit (batch 1)"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        explicit = methods.get("explicit_cot", {}).get("throughput", {}).get("1")
        for key, entry in methods.items():
            row = [METHOD_NAMES.get(key, key), f"{100 * entry['accuracy']:.1f}% ({entry['num_examples']})"]
            for b in batch_sizes:
                value = entry["throughput"].get(str(b))
                row.append(f"{value:.1f}" if value is not None else "-")
            mine = entry["throughput"].get("1")
            row.append(f"{mine / explicit:.2f}x" if mine and explicit else "-")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
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


def two_lane_wall_seconds(times: dict[str, int]) -> int:
    """What the stages take when ICoT-SI trains beside the no-CoT baseline and ICoT-KD's stages:
    the other stages one after another, plus the longer of the two lanes."""
    second = sum(times.get(name, 0) for name in SECOND_LANE)
    first = times.get("stepwise", 0)
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
    paths["json"].write_text(json.dumps(results, indent=2))
    paths["markdown"].write_text(markdown_table(results))
    plot_accuracy_vs_throughput(results, paths["plot"])
    return paths
