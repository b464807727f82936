"""Exact-match accuracy and throughput of the three ways to answer.

    no CoT        a causal LM trained on `input S answer S`, greedy answer
    explicit CoT  the teacher writes its chain of thought, then the answer
    implicit CoT  ImplicitCoTForCausalLM: emulator + student, no chain of thought

Each is an `Answerer`: a callable from a batch of raw question strings to answer
strings. `evaluate_answerer` runs one over a dataset in batches, scores it with the
local `evaluate` exact-match module and times it (examples/s; warm-up excluded).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import evaluate
import torch
from tqdm.auto import tqdm

from .data import answer_from_generation, prompt_batch, sequence_format_of
from .metrics.exact_match.exact_match import normalize_answer  # noqa: F401 (re-exported)
from .generation import generate_direct, generate_explicit
from .tokenization import separator_token_id

METRIC_PATH = str(Path(__file__).parent / "metrics" / "exact_match")
Answerer = Callable[[Sequence[str]], list[str]]


def load_exact_match():
    """The exact-match metric, loaded from the module shipped in this package (works offline)."""
    return evaluate.load(METRIC_PATH)


def _decode(tokenizer, rows: list[list[int]]) -> list[str]:
    return [answer_from_generation(tokenizer.decode(row, skip_special_tokens=True)) for row in rows]



def _device(model) -> torch.device:
    return next(model.parameters()).device


class ExplicitCoTAnswerer:
    """The teacher: generates `cot S answer S` after each prompt and keeps the answer. It also
    counts the CoT tokens each answer took (`cot_lengths`): a partly internalised ICoT-SI model
    writes fewer of them, which is what makes it faster."""

    def __init__(self, model, tokenizer, separator_token: str | None = None, max_new_tokens: int = 256, num_beams: int = 1):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.cot_lengths: list[int] = []
        self.separator_id = separator_token_id(tokenizer, separator_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.separator_id
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def __call__(self, questions: Sequence[str]) -> list[str]:
        batch = {k: v.to(_device(self.model)) for k, v in prompt_batch(self.tokenizer, questions, self.separator_id, self.pad_id,
                                                                                     sequence_format_of(self.model)).items()}
        # An ICoT-SI model trained with keep_positions records the positions its removed CoT skips.
        gap = getattr(self.model.config, "icot_position_gap", 0) or 0
        out = generate_explicit(self.model, **batch, separator_id=self.separator_id, pad_token_id=self.pad_id, max_new_tokens=self.max_new_tokens,
                                num_beams=self.num_beams, position_gap=gap)
        self.cot_lengths.extend(len(row) for row in out["cot"])
        return _decode(self.tokenizer, out["answer"])


class DirectAnswerer(ExplicitCoTAnswerer):
    """A no-CoT causal LM: the answer right after `input S`."""

    def __init__(self, model, tokenizer, separator_token: str | None = None, max_new_tokens: int = 64, num_beams: int = 1):
        super().__init__(model, tokenizer, separator_token, max_new_tokens, num_beams)

    def __call__(self, questions: Sequence[str]) -> list[str]:
        batch = {k: v.to(_device(self.model)) for k, v in prompt_batch(self.tokenizer, questions, self.separator_id, self.pad_id,
                                                                                     sequence_format_of(self.model)).items()}
        rows = generate_direct(self.model, **batch, separator_id=self.separator_id, pad_token_id=self.pad_id, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        return _decode(self.tokenizer, rows)


class ImplicitCoTAnswerer:
    """ImplicitCoTForCausalLM: emulator + student, no chain of thought."""

    def __init__(self, model, tokenizer, num_beams: int = 1):
        self.model, self.tokenizer, self.num_beams = model.eval(), tokenizer, num_beams

    def __call__(self, questions: Sequence[str]) -> list[str]:
        return self.model.answer(list(questions), self.tokenizer, batch_size=len(questions), num_beams=self.num_beams)


class CoconutAnswerer:
    """CoconutForCausalLM: the question, its thought block of latents, then whatever steps it still
    writes and the answer. `cot_lengths` counts the tokens written before the answer."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 64):
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens
        self.cot_lengths: list[int] = []

    def __call__(self, questions: Sequence[str]) -> list[str]:
        answers, steps = self.model.answer(list(questions), self.tokenizer, max_new_tokens=self.max_new_tokens, return_steps=True)
        self.cot_lengths.extend(steps)
        return answers


class CODIAnswerer:
    """CODIForCausalLM: the question, `<|bot|>`, its continuous thoughts, `<|eot|>`, then the answer; it
    writes no reasoning tokens (`cot_lengths` 0 each)."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 64):
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens
        self.cot_lengths: list[int] = []

    def __call__(self, questions: Sequence[str]) -> list[str]:
        answers = self.model.answer(list(questions), self.tokenizer, max_new_tokens=self.max_new_tokens)
        self.cot_lengths.extend([0] * len(answers))
        return answers


def evaluate_answerer(
    answerer: Answerer,
    questions: Sequence[str],
    references: Sequence[str],
    batch_size: int = 64,
    warmup_batches: int = 1,
    description: str = "evaluating",
    max_examples: int | None = None,
) -> dict:
    """Accuracy (exact match) and throughput of `answerer` over the questions."""
    if max_examples is not None:
        questions, references = questions[:max_examples], references[:max_examples]
    if len(questions) == 0:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    for start in range(0, min(warmup_batches * batch_size, len(questions)), batch_size):
        answerer(questions[start : start + batch_size])
    predictions: list[str] = []
    if hasattr(answerer, "cot_lengths"):
        answerer.cot_lengths = []  # count the timed answers only
    started = time.perf_counter()
    for start in tqdm(range(0, len(questions), batch_size), desc=description, leave=False):
        predictions.extend(answerer(questions[start : start + batch_size]))
    elapsed = time.perf_counter() - started
    score = load_exact_match().compute(predictions=predictions, references=list(references))["exact_match"]
    return {
        "accuracy": score,
        "examples_per_second": len(questions) / elapsed,
        "seconds": elapsed,
        "batch_size": batch_size,
        "num_examples": len(questions),
        "predictions": predictions,
        # mean CoT tokens generated per answer (0 for answerers that write none)
        "cot_tokens_generated": sum(getattr(answerer, "cot_lengths", [])) / len(questions),
    }
