"""`make mutants`: plant each mistake of the catalogue (tests/mutants.yaml) in a scratch copy of
the tree, run the tests that should see it, and report it caught (which test, what differed) or
missed. A missed mistake is a hole in the proof that the parity and trajectory tests give.

    python scripts/mutants.py                 # every entry, after a baseline run of their tests
    python scripts/mutants.py --fast          # the entries caught in seconds (tests/test_mutants.py runs these)
    python scripts/mutants.py --only state-norm-eps coconut-loss-unshifted

The tree is never touched: the scratch copy holds the tracked and untracked-but-not-ignored
files, each mutant is written there, its tests run against it (PYTHONPATH puts the copy's
`src/` first, checked before anything runs), and the file is restored before the next one.
Exit status 0 only when every entry is caught (and every `harmless` one is not) and the
baseline passes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CATALOGUE = REPO / "tests" / "mutants.yaml"
FIELDS = {"id", "file", "old", "new", "tests", "why"}
OPTIONAL = {"fast", "harmless"}


def load_catalogue(path: Path = CATALOGUE, root: Path = REPO) -> list[dict]:
    """The entries, each checked: its fields, a unique id, a file whose text holds `old` exactly
    once, and test files that exist. Errors name the entry and what to fix."""
    entries = yaml.safe_load(path.read_text()) or []
    seen = set()
    for number, entry in enumerate(entries, 1):
        name = f"{path.name} entry {number} ({entry.get('id', 'no id')})"
        missing, unknown = FIELDS - set(entry), set(entry) - FIELDS - OPTIONAL
        if missing or unknown:
            raise ValueError(f"{name}: " + "; ".join(filter(None, [missing and f"missing {sorted(missing)}", unknown and f"unknown {sorted(unknown)}"])))
        if entry["id"] in seen:
            raise ValueError(f"{name}: the id is used twice")
        seen.add(entry["id"])
        source = root / entry["file"]
        if not source.is_file():
            raise ValueError(f"{name}: {entry['file']} does not exist")
        count = source.read_text().count(entry["old"])
        if count != 1:
            raise ValueError(f"{name}: its old text occurs {count} times in {entry['file']} (it must occur once: the code moved; "
                             "update the entry)")
        if entry["old"] == entry["new"]:
            raise ValueError(f"{name}: old and new are the same text")
        for test in entry["tests"]:
            if not (root / test.split("::")[0]).is_file():
                raise ValueError(f"{name}: test file {test.split('::')[0]} does not exist")
    return entries


def copy_tree(destination: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored), symlinks as links."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        elif source.is_file():
            shutil.copy2(source, target)


def environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(scratch / "src"), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    found = subprocess.run([sys.executable, "-c", "import icot_hf; print(icot_hf.__file__)"], env=env, cwd=scratch,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not found.startswith(str(scratch)):
        raise SystemExit(f"mutants: the scratch copy's icot_hf is not the one imported ({found}); nothing was run")
    return env


def run_tests(tests: list[str], scratch: Path, env: dict) -> tuple[int, str, float]:
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests],
                            cwd=scratch, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr, time.time() - started


def first_failure(output: str) -> tuple[str, str]:
    """(the failing test, the first line of what it asserted) from pytest's -q output."""
    test = next((m.group(1) for m in re.finditer(r"^FAILED (\S+)", output, re.M)), "?")
    said = next((line[1:].strip() for line in output.splitlines() if line.startswith("E ") and line[1:].strip()), "")
    measured = re.search(r"\S+: largest per-step loss difference [\d.]+e[-+]\d+.*", output)  # what the trajectory tests print of every run
    return test, (measured.group(0) if measured else said)[:200]


def judge(entry: dict, code: int) -> str:
    """caught / missed / broken (the entry's tests did not run: collection error, no tests)."""
    if code not in (0, 1):
        return "broken"
    caught = code == 1
    if entry.get("harmless"):
        return "harmless" if not caught else "caught (marked harmless)"
    return "caught" if caught else "missed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE)
    parser.add_argument("--fast", action="store_true", help="Only the entries marked fast.")
    parser.add_argument("--only", nargs="+", help="Only these entry ids.")
    parser.add_argument("--no_baseline", action="store_true", help="Skip the unmutated run of the entries' tests.")
    parser.add_argument("--report", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args(argv)

    entries = load_catalogue(args.catalogue)
    if args.only:
        unknown = set(args.only) - {e["id"] for e in entries}
        if unknown:
            raise SystemExit(f"mutants: no entries {sorted(unknown)} in {args.catalogue}")
        entries = [e for e in entries if e["id"] in args.only]
    if args.fast:
        entries = [e for e in entries if e.get("fast")]
    with tempfile.TemporaryDirectory(prefix="icot_mutants_") as scratch_name:
        scratch = Path(scratch_name)
        copy_tree(scratch)
        env = environment(scratch)
        if not args.no_baseline:  # the tests must pass unmutated, or "caught" means nothing
            tests = list(dict.fromkeys(t for e in entries for t in e["tests"]))
            code, output, seconds = run_tests(tests, scratch, env)
            print(f"baseline: {len(tests)} test ids, {'passed' if code == 0 else 'FAILED'} in {seconds:.0f} s", flush=True)
            if code != 0:
                print(output[-3000:])
                return 1
        results = []
        for entry in entries:
            path = scratch / entry["file"]
            original = path.read_text()
            path.write_text(original.replace(entry["old"], entry["new"]))
            try:
                code, output, seconds = run_tests(entry["tests"], scratch, env)
            finally:
                path.write_text(original)
            verdict = judge(entry, code)
            test, said = first_failure(output) if code == 1 else ("", "")
            results.append({"id": entry["id"], "verdict": verdict, "test": test, "difference": said, "seconds": round(seconds, 1)})
            print(f"{verdict:>8}  {entry['id']}  ({seconds:.0f} s)" + (f"  {test}: {said}" if test else ""), flush=True)
            if verdict == "broken":
                print(output[-2000:])
    bad = [r for r in results if r["verdict"] not in ("caught", "harmless")]
    print(f"\n{len(results) - len(bad)} of {len(results)} as expected" + (f"; not: {', '.join(r['id'] for r in bad)}" if bad else ""))
    if args.report:
        args.report.write_text(json.dumps(results, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
