"""Convert ICoT text files (`input||cot #### answer` per line) into a `datasets.DatasetDict`.

    python dataset_scripts/convert_icot_text.py \
        --train ../shared/data/icot_original/gsm8k/train_no_aug.txt \
        --valid ../shared/data/icot_original/gsm8k/valid.txt \
        --test ../shared/data/icot_original/gsm8k/test.txt \
        --output_dir data/gsm8k [--push_to_hub user/icot-gsm8k]

Works for any task (multiplication, GSM8K, your own). A malformed line stops the
conversion with its file, line number and what is wrong; nothing is written then.
"""

import argparse
import sys
from pathlib import Path

from icot_hf.data import ICoTFormatError, dataset_from_text_files, dataset_warnings, file_sha256, overwrite_decision, save_dataset_dict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", help="training split text file")
    parser.add_argument("--valid", help="validation split text file")
    parser.add_argument("--test", help="test split text file")
    parser.add_argument("--split", action="append", default=[], metavar="NAME=PATH", help="any other split, repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already saved in --output_dir (never other files)")
    parser.add_argument("--rerun_if_changed", action="store_true",
                        help="keep a dataset this script made from the same files, remake one it made from others; "
                             "stop at any other dataset in --output_dir (what `make reproduce` passes)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--push_to_hub", default=None, metavar="REPO")
    parser.add_argument("--task", default="custom", help="task name for the dataset card")
    args = parser.parse_args(argv)
    files = {name: path for name, path in (("train", args.train), ("valid", args.valid), ("test", args.test)) if path}
    for item in args.split:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--split expects NAME=PATH, got {item!r}")
        files[name] = path
    if not files:
        parser.error("give at least one of --train, --valid, --test or --split NAME=PATH")
    for name, path in files.items():
        if not Path(path).is_file():
            sys.exit(f"convert_icot_text: --{name if name in ('train', 'valid', 'test') else 'split ' + name} {path}: no such file")
    settings = {"script": "convert_icot_text", "files_sha256": {name: file_sha256(path) for name, path in files.items()}}
    overwrite = overwrite_decision(args.output_dir, settings, "convert_icot_text", args.overwrite, args.rerun_if_changed)
    if overwrite is None:  # --rerun_if_changed: the same data is there already
        return
    try:
        dataset = dataset_from_text_files(files)
    except ICoTFormatError as error:
        sys.exit(f"convert_icot_text: {error}")
    for warning in dataset_warnings(dataset):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        save_dataset_dict(dataset, args.output_dir, overwrite=overwrite, settings=settings)
    except FileExistsError as error:
        sys.exit(f"{Path(__file__).stem}: {error}")
    print(f"saved {', '.join(f'{k}: {len(v)}' for k, v in dataset.items())} to {args.output_dir}")
    if args.push_to_hub:
        from icot_hf.hub import push_dataset

        push_dataset(dataset, args.push_to_hub, task=args.task)


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
