"""CODI's data, as the released train.py prepares it (its `SupervisedDataset`, `preprocess` and collator).

Each example becomes three sequences:

    teacher (ref):   question  CoT  answer-text <eos>          (labels on CoT and answer)
    student in:      question <|bot|>                           (left-padded; thoughts follow)
    student out:     <|eot|> answer-text <eos>                  (labels on the answer)

where answer-text is `answer_prefix + answer` ("The answer is: 42"), each part tokenised on its own
(with `remove_eos: false`, eos also ends the question and the CoT, and the student's part starts
`<|eot|> <eos>`). The distillation reads both models at the last token of the answer prefix (the `:`
of "The answer is:"), plus `distill_offset`: the released code adds 1 for model names containing
"llama" or "qwen", whose tokenizers put the space before the value in a token of its own.

The released handling of GSM8k-Aug, each an option here with its default:
- the CoT's last step is dropped (`include_last_cot: false`): it is the answer's own computation;
  a problem with one step keeps an empty CoT;
- answers that do not start with a digit are skipped (`skip_non_digit_answers`; negative answers,
  which "bring distillation problems for LLaMA");
- examples over `max_token_num` tokens (question + CoT + answer) are skipped, and each part is cut to
  `max_part_tokens` (256) tokens.
Steps are `icot_hf.data.split_steps`' (GSM8K's `<<...>>`, multiplication's partial products), so
dropping the last keeps the text before it: for GSM8k-Aug that is the released `" ".join(cot.split(" ")[:-1])`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..data import step_starts

IGNORE = -100
MULTIPLICATION_TAIL = re.compile(r"\s*\+\s*$")


@dataclass
class CODIDataSettings:
    answer_prefix: str = "The answer is: "
    include_last_cot: bool = False
    skip_non_digit_answers: bool = True
    remove_eos: bool = True
    max_token_num: int = 1000
    max_part_tokens: int = 256
    distill_offset: int = 0


def without_last_step(cot: str) -> str:
    """The CoT up to its last step (and without the separator before it); empty for a one-step CoT."""
    cot = cot.strip()
    starts = step_starts(cot)
    if not starts:
        return ""
    return MULTIPLICATION_TAIL.sub("", cot[:starts[-1]].rstrip())


def answer_value(answer: str) -> str:
    """The answer as written after the prefix: the field without '####' (the released code also keeps only
    its last space-separated word, which for GSM8k-Aug's one-number answers is the same; multiplication's
    answers are digits separated by spaces, all of which count)."""
    return answer.replace("####", "").strip()


def keep_example(example: dict, tokenizer, settings: CODIDataSettings) -> bool:
    """The released filters: a non-empty answer (starting with a digit, unless told otherwise) and at most
    `max_token_num` tokens in question + CoT + answer."""
    question = example["question"] if "question" in example else example["input"]
    value = answer_value(example["answer"])
    if not value or (settings.skip_non_digit_answers and not value[0].isdigit()):
        return False
    return len(tokenizer.encode(question + example["cot"] + example["answer"])) <= settings.max_token_num


def _tokens(tokenizer, text: str, settings: CODIDataSettings) -> list[int]:
    return tokenizer(text, truncation=True, max_length=settings.max_part_tokens)["input_ids"] if text else []


def distill_index(tokenizer, answer_ids: list[int], settings: "CODIDataSettings") -> int:
    """Index, within the tokenised answer text, of the token the distillation reads: the last token of the
    answer prefix ("The answer is:", as the released code finds it: its tokens matched in the sequence),
    plus `distill_offset`. Without a prefix, -1: the token before the answer (eos with `remove_eos: false`,
    which is the `input S cot S answer S` format of an icot_hf explicit-CoT teacher)."""
    if not settings.answer_prefix.strip():  # no prefix: the token before the answer (the separator a CoT teacher wrote)
        return -1 + settings.distill_offset
    prompt = tokenizer.encode(settings.answer_prefix.rstrip(), add_special_tokens=False)
    for start in range(len(answer_ids) - len(prompt) + 1):
        if answer_ids[start:start + len(prompt)] == prompt:
            index = start + len(prompt) - 1 + settings.distill_offset
            if index >= len(answer_ids):
                break
            return index
    raise ValueError(f"the answer {tokenizer.decode(answer_ids)!r} does not hold the tokens of its prefix {settings.answer_prefix!r} "
                     f"(tokenised alone: {prompt}); pick an answer_prefix that tokenises the same inside the answer")


def encode_example(example: dict, tokenizer, bot_id: int, eot_id: int, settings: CODIDataSettings) -> dict:
    """One raw example (`input`/`cot`/`answer` or `question`/`cot`/`answer`) as the released `preprocess` builds it."""
    question = example["question"] if "question" in example else example["input"]
    cot = example["cot"] if settings.include_last_cot else without_last_step(example["cot"])
    value = answer_value(example["answer"])
    answer_text = settings.answer_prefix + value
    question_ids = _tokens(tokenizer, question, settings)
    cot_ids = _tokens(tokenizer, cot, settings)
    answer_ids = _tokens(tokenizer, answer_text, settings)
    bos = tokenizer.bos_token_id
    if bos is not None and answer_ids[:1] == [bos]:  # a tokenizer that starts every text with BOS: only the question keeps it, as released
        cot_ids, answer_ids = cot_ids[1:] if cot_ids[:1] == [bos] else cot_ids, answer_ids[1:]
    answer_index = distill_index(tokenizer, answer_ids, settings)
    eos = tokenizer.eos_token_id
    if not settings.remove_eos:
        question_ids, cot_ids = question_ids + [eos], cot_ids + [eos]
    answer_ids = answer_ids + [eos]
    ref = question_ids + cot_ids + answer_ids
    decoder_start = [eot_id] if settings.remove_eos else [eot_id, eos]
    decoder = decoder_start + answer_ids
    return {
        "encoder_input_ids": question_ids + [bot_id],
        "decoder_input_ids": decoder,
        "ref_input_ids": ref,
        "ref_labels": [IGNORE] * len(question_ids) + ref[len(question_ids):],
        "ref_distill_position": len(question_ids) + len(cot_ids) + answer_index,
        "model_distill_position": len(decoder_start) + answer_index,
    }


@dataclass
class CODICollator:
    """Pads as the released collator: the student's input on the left, everything else on the right;
    labels are -100 on padding."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        def pad(rows, value, left=False):
            width = max(len(r) for r in rows)
            return torch.tensor([[value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r)) for r in rows])

        def mask(rows, left=False):
            return pad([[1] * len(r) for r in rows], 0, left)

        encoder = [f["encoder_input_ids"] for f in features]
        decoder = [f["decoder_input_ids"] for f in features]
        ref = [f["ref_input_ids"] for f in features]
        return {
            "encoder_input_ids": pad(encoder, self.pad_token_id, left=True),
            "encoder_attention_mask": mask(encoder, left=True),
            "decoder_input_ids": pad(decoder, self.pad_token_id),
            "decoder_attention_mask": mask(decoder),
            "labels": pad(decoder, IGNORE),
            "ref_input_ids": pad(ref, self.pad_token_id),
            "ref_attention_mask": mask(ref),
            "ref_labels": pad([f["ref_labels"] for f in features], IGNORE),
            "ref_distill_position": torch.tensor([f["ref_distill_position"] for f in features]),
            "model_distill_position": torch.tensor([f["model_distill_position"] for f in features]),
        }
