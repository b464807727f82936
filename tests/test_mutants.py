"""The catalogue of plausible mistakes (tests/mutants.yaml, `make mutants`): every entry still
applies to today's code, and the fast ones are each caught by the tests they name."""

import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import mutants  # noqa: E402

sys.path.remove(str(REPO / "scripts"))


def test_every_entry_applies_to_the_code_once():
    entries = mutants.load_catalogue()
    assert len(entries) >= 25
    files = {e["file"] for e in entries}
    for method in ("src/icot_hf/kd/teacher_states.py", "src/icot_hf/kd/modeling_icot.py", "src/icot_hf/stepwise/stepwise_trainer.py",
                   "src/icot_hf/coconut/modeling_coconut.py", "src/icot_hf/coconut/data.py", "src/icot_hf/codi/modeling_codi.py",
                   "src/icot_hf/codi/data.py"):
        assert method in files, f"no planted mistake in {method}"


def test_a_stale_entry_is_named(tmp_path):
    catalogue = tmp_path / "mutants.yaml"
    catalogue.write_text("- {id: gone, file: src/icot_hf/kd/teacher_states.py, old: 'no such text', new: x, tests: [tests/test_teacher.py], why: y}\n")
    with pytest.raises(ValueError, match=r"entry 1 \(gone\): its old text occurs 0 times in src/icot_hf/kd/teacher_states.py"):
        mutants.load_catalogue(catalogue)


@pytest.mark.slow
@pytest.mark.proof
def test_the_fast_mistakes_are_each_caught():
    """Each fast entry planted in a scratch copy fails the tests it names (the suite itself is
    the baseline: those tests pass unmutated in this same run)."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "mutants.py"), "--fast", "--no_baseline"],
                            capture_output=True, text=True, timeout=1800)
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
