"""Gate curves of ICoT-SI runs (issue 14's search): the validation gate checks each run logged
(teacher-forced sequence and token accuracy at the current removal) against training examples,
read from each run's newest trainer_state.json (final folder or checkpoint), one panel per metric.

    python experiments/si_gate_curves.py --output experiments/results/4x4_mult/si_search/gate_curves \
        outputs/4x4_mult/si_search/stepwise_gated_4x256_lr1e-3 outputs/4x4_mult/si_search/stepwise_gated_4x256_keep_positions ...

A run given as a recipe's stdout log (`name.log`) is read from the metric dicts the Trainer
printed; its gate checks fall every `--every` steps (every check of a gated run lands on a
multiple of gate_every_steps when max_stage_steps is one), which gives their steps.
Writes <output>.png and <output>.json (the points), so that runs stopped before their first
checkpoint still show how far they got.
"""

import argparse
import json
from pathlib import Path


def newest_state(run: Path) -> dict | None:
    candidates = [run / "trainer_state.json"] + sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    found = [p for p in candidates if p.is_file()]
    if not found:
        return None
    return json.loads(max(found, key=lambda p: json.loads(p.read_text())["global_step"]).read_text())


def gate_points(state: dict) -> list[dict]:
    per_step = state["train_batch_size"]
    return [{"step": e["step"], "examples": e["step"] * per_step, "stage": int(e["eval_gate_removal_stage"]),
             "sequence_accuracy": e["eval_gate_sequence_accuracy"], "token_accuracy": e["eval_gate_token_accuracy"]}
            for e in state["log_history"] if "eval_gate_removal_stage" in e]


def log_points(path: Path, every: int, batch_size: int) -> list[dict]:
    import ast
    import re

    entries = [ast.literal_eval(m) for m in re.findall(r"\{'eval_gate_[^{}]*\}", path.read_text(errors="replace"))]
    return [{"step": every * (i + 1), "examples": every * (i + 1) * batch_size, "stage": int(float(e["eval_gate_removal_stage"])),
             "sequence_accuracy": float(e["eval_gate_sequence_accuracy"]), "token_accuracy": float(e["eval_gate_token_accuracy"])}
            for i, e in enumerate(entries)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--output", required=True)
    parser.add_argument("--every", type=int, default=50, help="gate_every_steps of runs given as logs")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size of runs given as logs")
    args = parser.parse_args()
    curves = {}
    for run in map(Path, args.runs):
        if run.suffix == ".log":
            curves[run.stem] = log_points(run, args.every, args.batch_size)
            continue
        state = newest_state(run)
        if state is None:
            print(f"{run}: no trainer_state.json, skipped")
            continue
        curves[run.name] = gate_points(state)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, points in curves.items():
        for ax, key in zip(axes, ("sequence_accuracy", "token_accuracy")):
            line, = ax.plot([p["examples"] for p in points], [p[key] for p in points], marker=".", label=name)
            advances = [q["examples"] for p, q in zip(points, points[1:]) if q["stage"] != p["stage"]]
            for x in advances:
                ax.axvline(x, ymin=0.96, ymax=1.0, color=line.get_color(), lw=1.2)
    for ax, label in zip(axes, ("gate: sequence accuracy", "gate: token accuracy")):
        ax.set_xlabel("training examples (ICoT-SI, from the teacher)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0.6, 1.0)
    axes[0].legend(fontsize="x-small")
    fig.suptitle("4x4 ICoT-SI gate checks, 256 validation examples (ticks on top: stage advances)")
    fig.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output.with_suffix(".png"), dpi=110)
    output.with_suffix(".json").write_text(json.dumps(curves, indent=1))
    print(f"wrote {output.with_suffix('.png')} and .json")


if __name__ == "__main__":
    main()
