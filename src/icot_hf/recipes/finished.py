"""Whether every stage of a run is already finished with its settings: one launch for all of them.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml -m icot_hf.recipes.finished \
        teacher --config A.yaml --output_dir outputs/t --rerun_if_changed true :: stepwise --config B.yaml ...

Each stage is a recipe name and the arguments that recipe would get, stages separated by `::`.
Exit status 0 when every stage's output_dir holds a finished run with exactly the record its
recipe would compute (the same settings and upstream models, intact weights: `run_record`), 1
otherwise, naming the first that is not. `make reproduce` asks this once before its stages: a
re-run right after a finished run then costs one launch instead of one per stage. Launched the
way the stages are (same accelerate config), so the record is computed under the same
environment; anything short of "all finished" and every stage is launched as usual, where the
recipe decides for itself (this is only ever a shortcut to the same answer).
"""

from __future__ import annotations

import sys
from pathlib import Path

RECIPES = {"teacher": "TeacherConfig", "mind_reading": "MindReadingConfig", "emulator": "ThoughtEmulationConfig",
           "couple": "CoupledConfig", "stepwise": "StepwiseInternalizationConfig", "coconut": "CoconutConfig", "codi": "CODIConfig"}


def stage_is_finished(recipe: str, argv: list[str]) -> str | None:
    """None when the stage is finished with this record; else why not (one line)."""
    import icot_hf
    from icot_hf.recipe_utils import ScriptArguments, parse_args
    from icot_hf.run_record import COMPLETE_MARKER, read_json, run_record, weights_changed

    if recipe not in RECIPES:
        raise SystemExit(f"finished: unknown recipe {recipe!r} (one of {', '.join(RECIPES)})")
    config_class = getattr(icot_hf, RECIPES[recipe])
    script_args, training_args = parse_args(ScriptArguments, config_class, argv=argv)
    output_dir = Path(training_args.output_dir)
    marker = read_json(output_dir / COMPLETE_MARKER)
    if marker is None:
        return f"{output_dir}: no finished run"
    if script_args.overwrite_output_dir:
        return f"{output_dir}: --overwrite_output_dir asks for a fresh run"
    damaged = weights_changed(output_dir, marker)
    if damaged:
        return f"{output_dir}: {damaged}"
    if marker.get("run") != run_record(script_args, training_args):
        return f"{output_dir}: finished with other settings or upstream models"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages, current = [], []
    for token in argv + ["::"]:
        if token == "::":
            if current:
                stages.append(current)
            current = []
        else:
            current.append(token)
    if not stages:
        raise SystemExit("finished: no stages given (recipe args... :: recipe args...)")
    for recipe, *arguments in stages:
        why = stage_is_finished(recipe, arguments)
        if why is not None:
            print(f"finished: not every stage is done ({recipe}: {why})", flush=True)
            return 1
    print(f"finished: all {len(stages)} stages are done with these settings and upstream models", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
