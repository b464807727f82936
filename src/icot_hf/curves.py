"""Learning curves: validation exact match and token accuracy against training examples seen.

Every recipe writes `learning_curve.json` beside its final model (from the Trainer's log
history: evaluations, and for ICoT-SI the removal stage at each gate check and advance).
`plot_learning_curves` draws the stages of one reproduction run on shared axes, so a reader
sees how many examples each method needed, where the no-CoT baseline stays, and where each
chain-of-thought removal happened.

    python -m icot_hf.curves --output_dir results/4x4_mult \
        no_cot=outputs/4x4_mult/no_cot teacher=outputs/4x4_mult/teacher stepwise=outputs/4x4_mult/stepwise
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

CURVE_FILE = "learning_curve.json"
STAGE_NAMES = {"teacher": "explicit-CoT teacher", "no_cot": "no CoT", "mind_reading": "mind-reading student (KD)",
               "emulator": "thought emulator (KD)", "coupled": "coupled (ICoT-KD)", "stepwise": "ICoT-SI"}


def examples_per_step(args) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)


def learning_curve(trainer) -> dict:
    """The evaluations of a finished run, keyed by examples seen; ICoT-SI adds its schedule."""
    per_step = examples_per_step(trainer.args)
    evaluations, gates = {}, []
    for entry in trainer.state.log_history:
        step = entry.get("step", 0)
        metrics = {k[len("eval_"):]: v for k, v in entry.items() if k.startswith("eval_") and not k.startswith("eval_gate_")}
        if metrics:
            evaluations.setdefault(step, {"step": step, "examples": step * per_step}).update(metrics)
        if "eval_gate_removal_stage" in entry:
            gates.append({"step": step, "examples": step * per_step, **{k[len("eval_gate_"):]: v for k, v in entry.items() if k.startswith("eval_gate_")}})
    curve = {"examples_per_step": per_step, "evaluations": [evaluations[s] for s in sorted(evaluations)], "gate_checks": gates}
    schedule = getattr(trainer, "schedule", None)
    if schedule is not None:
        curve["removal_per_stage"] = trainer.args.remove_per_stage
        curve["advances"] = [dict(a, examples=a["step"] * per_step) for a in schedule.advances]
        curve["best_fully_removed"] = {"step": schedule.best_step, "exact_match": schedule.best_exact_match}
    return curve


def write_learning_curve(trainer, output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / CURVE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(learning_curve(trainer), indent=2))
    os.replace(temporary, path)
    return path


def plot_learning_curves(curves: dict[str, dict], path: str | os.PathLike, title: str = "") -> None:
    """Exact match (left) and token accuracy (right) against examples seen, one line per stage;
    ICoT-SI's stage advances are ticks along the top of each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (name, curve), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3):
        points = curve["evaluations"]
        for ax, key in zip(axes, ("exact_match", "token_accuracy")):
            xs = [p["examples"] for p in points if key in p]
            ys = [100 * p[key] for p in points if key in p]
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=STAGE_NAMES.get(name, name))
            for advance in curve.get("advances", []):
                ax.axvline(advance["examples"], ymin=0.97, ymax=1.0, color=color, lw=1)
    for ax, label in zip(axes, ("validation exact match (%)", "validation token accuracy (%)")):
        ax.set_xlabel("training examples seen (this stage)")
        ax.set_ylabel(label)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="center right")
    fig.suptitle(title + ("  (ticks on top: ICoT-SI removal stages)" if any("advances" in c for c in curves.values()) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_table(curves: dict[str, dict]) -> str:
    """Markdown: each stage's evaluations as examples seen -> exact match / token accuracy."""
    lines = []
    for name, curve in curves.items():
        lines += [f"### {STAGE_NAMES.get(name, name)}", "", "| examples | removed CoT tokens | exact match | token accuracy | loss |", "|---|---|---|---|---|"]
        for p in curve["evaluations"]:
            removed = p.get("removal_stage", None)
            removed = "" if removed is None else str(int(removed) * curve.get("removal_per_stage", 0))
            em = f"{100 * p['exact_match']:.1f}%" if "exact_match" in p else ""
            acc = f"{p['token_accuracy']:.3f}" if "token_accuracy" in p else ""
            loss = f"{p['loss']:.3f}" if "loss" in p else ""
            lines.append(f"| {p['examples']:,} | {removed} | {em} | {acc} | {loss} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="+", help="name=model_folder pairs (a folder holding learning_curve.json)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    curves = {}
    for item in args.stages:
        name, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"expected name=folder, got {item!r}")
        path = Path(folder) / CURVE_FILE
        if not path.is_file():
            print(f"curves: {path} not found (a stage trained before learning curves were recorded?); skipping {name}")
            continue
        curves[name] = json.loads(path.read_text())
    if not curves:
        raise SystemExit("curves: no learning_curve.json in any of the given folders")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(curves, indent=2)
    if (out / "learning_curves.json").is_file() and (out / "learning_curves.json").read_text() == text and (out / "learning_curves.png").is_file():
        print(f"curves: {out / 'learning_curves.json'} is unchanged (the same stages' curves): nothing written")
        return
    (out / "learning_curves.md").write_text(f"# Learning curves{': ' + args.title if args.title else ''}\n\n" + curves_table(curves))
    plot_learning_curves(curves, out / "learning_curves.png", args.title)
    (out / "learning_curves.json").write_text(text)  # last: what a re-run compares with, so a crash before it redraws
    print(f"wrote {out / 'learning_curves.png'}, learning_curves.json, learning_curves.md")


if __name__ == "__main__":
    main()
