"""Push a trained stage (teacher, no_cot, student, emulator, implicit, stepwise) to the Hub with its card.

    python recipes/push.py --folder outputs/4x4_mult/coupled --repo_id you/icot-4x4-implicit \
        --stage implicit --task "4x4 multiplication" [--results results/4x4_mult/results.json]
"""

import argparse
import json
from pathlib import Path

from icot_hf.hub import HubUnavailableError, push_folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--repo_id", required=True)
    parser.add_argument("--stage", required=True, choices=["teacher", "no_cot", "student", "emulator", "implicit", "stepwise"])
    parser.add_argument("--task", required=True)
    parser.add_argument("--base_model", default=None)
    parser.add_argument("--dataset", default=None)
    args = parser.parse_args()
    marker = Path(args.folder) / "training_complete.json"
    if not marker.is_file():  # a stage still training (or cut off) has checkpoints but no final model
        raise SystemExit(f"push: {args.folder} has no training_complete.json: the stage has not finished; nothing was pushed")
    metrics = json.loads(marker.read_text())
    try:
        push_folder(args.folder, args.repo_id, args.stage, args.task, base_model=args.base_model, dataset=args.dataset, metrics=metrics)
    except HubUnavailableError as error:
        raise SystemExit(str(error))
    print(f"pushed {args.folder} to https://huggingface.co/{args.repo_id}")


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
