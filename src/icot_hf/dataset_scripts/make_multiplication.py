"""Make k-by-k multiplication data in the ICoT format as a `datasets.DatasetDict`.

    python dataset_scripts/make_multiplication.py --digits 4 --output_dir data/4x4_mult \
        [--train_size 808000 --valid_size 1000 --test_size 1000] [--exclude_files test.txt ...] \
        [--text_dir data/4x4_mult_text] [--push_to_hub user/icot-4x4-mult]

Splits never share a problem; problems in --exclude_files (e.g. the paper's test set)
appear in none of them. The same seed gives the same data. Written atomically.
"""

import argparse
import sys
from pathlib import Path

from datasets import Dataset, DatasetDict

from icot_hf.data import file_sha256, overwrite_decision, read_icot_text, save_dataset_dict, write_icot_text
from icot_hf.multiplication import format_problem, parse_operands, sample_problems


def build(digits: int, sizes: dict[str, int], seed: int, exclude_files: list[str]) -> DatasetDict:
    excluded = set()
    for path in exclude_files:
        for row in read_icot_text(path):
            a, b, k = parse_operands(row["input"])
            if k == digits:
                excluded.add((a, b))
    pairs = iter(sample_problems(digits, sum(sizes.values()), seed, excluded))
    splits = {}
    for split, size in sizes.items():
        rows = [format_problem(a, b, digits) for a, b in (next(pairs) for _ in range(size))]
        splits[split] = Dataset.from_dict({c: [r[c] for r in rows] for c in ("input", "cot", "answer")})
    return DatasetDict(splits)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=int, default=4, help="k in k-by-k (2..20)")
    parser.add_argument("--train_size", type=int, default=808_000)
    parser.add_argument("--valid_size", type=int, default=1_000)
    parser.add_argument("--test_size", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--exclude_files", nargs="*", default=[], help="ICoT text files whose problems must not appear")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already saved in --output_dir (never other files)")
    parser.add_argument("--rerun_if_changed", action="store_true",
                        help="keep a dataset this script made with the same settings, remake one it made with others; "
                             "stop at any other dataset in --output_dir (what `make reproduce` passes)")
    parser.add_argument("--output_dir", required=True, help="where the DatasetDict is saved")
    parser.add_argument("--text_dir", default=None, help="also write train.txt/valid.txt/test.txt here")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="push the DatasetDict to this Hub dataset repo")
    args = parser.parse_args(argv)
    if not 2 <= args.digits <= 20:
        parser.error(f"--digits must be in 2..20, got {args.digits}")
    sizes = {"train": args.train_size, "valid": args.valid_size, "test": args.test_size}
    if any(v < 0 for v in sizes.values()) or sum(sizes.values()) == 0:
        parser.error("split sizes must be >= 0 and not all zero")
    sizes = {k: v for k, v in sizes.items() if v > 0}
    settings = {"script": "make_multiplication", "digits": args.digits, "sizes": sizes, "seed": args.seed,
                "exclude_files_sha256": sorted(file_sha256(path) for path in args.exclude_files)}
    overwrite = overwrite_decision(args.output_dir, settings, "make_multiplication", args.overwrite, args.rerun_if_changed)
    if overwrite is None:  # --rerun_if_changed: the same data is there already
        return
    dataset = build(args.digits, sizes, args.seed, args.exclude_files)
    try:
        save_dataset_dict(dataset, args.output_dir, overwrite=overwrite, settings=settings)
    except FileExistsError as error:
        sys.exit(f"{Path(__file__).stem}: {error}")
    if args.text_dir:
        for split, part in dataset.items():
            write_icot_text(part, Path(args.text_dir) / f"{split}.txt")
    print(f"saved {', '.join(f'{k}: {len(v)}' for k, v in dataset.items())} to {args.output_dir}")
    if args.push_to_hub:
        from icot_hf.hub import push_dataset

        push_dataset(dataset, args.push_to_hub, task=f"{args.digits}x{args.digits} multiplication")


if __name__ == "__main__":
    from icot_hf.cli import run

    run(main)
