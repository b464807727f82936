"""The generated multiplication data: exact format of the paper's files, disjoint splits."""

import subprocess
import sys

import pytest
from datasets import load_from_disk

from conftest import REPO, SHARED_DATA
from icot_hf.data import parse_icot_line, read_icot_text
from icot_hf.multiplication import format_problem, parse_operands, sample_problems

# Real lines of the paper's 4x4 and 5x5 test files, so the check runs without ../shared too.
BUILT_IN_LINES = [
    "1 3 4 5 * 8 1 9 3||8 4 4 3 4 + 0 1 3 4 5 0 ( 8 5 7 7 9 0 ) + 0 0 9 7 8 8 4 ( 8 5 6 5 8 9 4 ) + 0 0 0 3 9 2 6 1 #### 8 5 6 8 7 2 1 2",
    "8 9 6 5 * 5 5 5 4||0 9 4 8 2 + 0 0 9 4 8 2 ( 0 9 3 3 1 3 ) + 0 0 0 9 4 8 2 ( 0 9 3 2 6 1 3 ) + 0 0 0 2 9 7 2 2 #### 0 9 3 4 5 9 5 2",
]
PAPER_FILES = sorted(SHARED_DATA.glob("*_by_*_mult/*.txt")) if SHARED_DATA.exists() else []


def regenerate(line: str) -> str:
    example = parse_icot_line(line)
    a, b, k = parse_operands(example["input"])
    again = format_problem(a, b, k)
    return f"{again['input']}||{again['cot']} #### {again['answer']}"


@pytest.mark.parametrize("line", BUILT_IN_LINES)
def test_regenerates_built_in_lines(line):
    assert regenerate(line) == line


@pytest.mark.skipif(not PAPER_FILES, reason="../shared/data/icot_original not present")
@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regenerates_every_line_of_the_paper_files(path):
    lines = [line.rstrip() for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) == 1000
    mismatched = [line for line in lines if regenerate(line) != line]
    assert not mismatched, mismatched[:2]


def test_format_problem_rejects_too_many_digits():
    with pytest.raises(ValueError, match="at most k=2 digits"):
        format_problem(123, 45, 2)


def test_sampling_is_seeded_distinct_and_excludes():
    first = list(sample_problems(3, 500, seed=7))
    assert first == list(sample_problems(3, 500, seed=7))
    assert len(set(first)) == 500
    excluded = set(first[:100])
    assert not excluded & set(sample_problems(3, 500, seed=7, exclude=excluded))
    assert all(100 <= a <= 999 and 100 <= b <= 999 for a, b in first)


def test_script_makes_disjoint_splits_excluding_files(tmp_path):
    exclude = tmp_path / "exclude.txt"
    held_out = [format_problem(a, b, 2) for a, b in list(sample_problems(2, 50, seed=99))]
    exclude.write_text("\n".join(f"{r['input']}||{r['cot']} #### {r['answer']}" for r in held_out) + "\n")
    out = tmp_path / "data"
    cmd = [sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "3000",
           "--valid_size", "200", "--test_size", "200", "--exclude_files", str(exclude), "--output_dir", str(out), "--text_dir", str(tmp_path / "text")]
    subprocess.run(cmd, check=True, capture_output=True)
    data = load_from_disk(str(out))
    splits = {name: set(data[name]["input"]) for name in ("train", "valid", "test")}
    assert [len(splits[n]) for n in ("train", "valid", "test")] == [3000, 200, 200]
    assert not splits["train"] & splits["valid"] and not splits["train"] & splits["test"] and not splits["valid"] & splits["test"]
    assert not {r["input"] for r in held_out} & (splits["train"] | splits["valid"] | splits["test"])
    assert read_icot_text(tmp_path / "text" / "valid.txt")[0] == data["valid"][0]
    # the same seed gives the same data
    subprocess.run(cmd[:-4] + ["--output_dir", str(tmp_path / "again")], check=True, capture_output=True)
    assert load_from_disk(str(tmp_path / "again"))["test"]["input"] == data["test"]["input"]
