"""k-by-k multiplication problems in the ICoT text format.

Numbers are written least-significant digit first, as in the paper's files. For
`a * b` the chain of thought lists the partial products `a * b_j` (each padded to k+1
digits and shifted by j zeros) joined by `+`, with the running sum in parentheses
after every partial product but the first and the last; the answer is the product
padded to 2k digits. `format_problem(a, b, k)` regenerates every line of the paper's
4x4 and 5x5 files exactly (tests/test_multiplication.py checks it).
"""

from __future__ import annotations

import random
from typing import Iterator


def _reversed_digits(value: int, width: int) -> str:
    return " ".join(reversed(str(value).zfill(width)))


def format_problem(a: int, b: int, k: int) -> dict[str, str]:
    """The example `{input, cot, answer}` for a * b with k-digit operands."""
    if a >= 10**k or b >= 10**k or a < 0 or b < 0:
        raise ValueError(f"operands {a} and {b} must be non-negative with at most k={k} digits")
    b_digits = [int(d) for d in reversed(str(b).zfill(k))]
    steps, running_sum = [], 0
    for j, digit in enumerate(b_digits):
        partial = a * digit
        running_sum += partial * 10**j
        piece = " ".join(["0"] * j + [_reversed_digits(partial, k + 1)])
        if j == 0:
            steps.append(piece)
        else:
            steps.append("+ " + piece)
            if j < k - 1:
                steps.append("( " + _reversed_digits(running_sum, j + k + 1) + " )")
    return {
        "input": f"{_reversed_digits(a, k)} * {_reversed_digits(b, k)}",
        "cot": " ".join(steps),
        "answer": _reversed_digits(a * b, 2 * k),
    }


def parse_operands(input_text: str) -> tuple[int, int, int]:
    """Inverse of the input format: "1 3 4 5 * 8 1 9 3" -> (5431, 3918, 4)."""
    left, sep, right = input_text.partition(" * ")
    if not sep:
        raise ValueError(f"not a multiplication input (no ' * '): {input_text!r}")
    a_digits, b_digits = left.split(), right.split()
    if len(a_digits) != len(b_digits) or not all(d.isdigit() for d in a_digits + b_digits):
        raise ValueError(f"operands must be space-separated digits of equal length: {input_text!r}")
    return int("".join(reversed(a_digits))), int("".join(reversed(b_digits))), len(a_digits)


def sample_problems(k: int, count: int, seed: int, exclude: set[tuple[int, int]] = frozenset()) -> Iterator[tuple[int, int]]:
    """`count` distinct (a, b) pairs with k-digit operands (leading digit non-zero), none in `exclude`."""
    low, high = 10 ** (k - 1), 10**k - 1
    space = (high - low + 1) ** 2
    if count + len(exclude) > space:
        raise ValueError(f"asked for {count} distinct {k}x{k} problems but only {space - len(exclude)} exist")
    rng = random.Random(seed)
    seen = set(exclude)
    produced = 0
    while produced < count:
        pair = (rng.randint(low, high), rng.randint(low, high))
        if pair in seen:
            continue
        seen.add(pair)
        produced += 1
        yield pair
