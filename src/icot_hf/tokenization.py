"""A word-level tokenizer for digit tasks (multiplication and friends).

Every whitespace-separated symbol of the ICoT text format ("1", "*", "+", "(", ...) is one
token, so a 4x4 problem with its chain of thought is ~60 tokens and the model never has
to learn BPE merges of digit runs. The result is an ordinary `PreTrainedTokenizerFast`:
it saves, loads and pushes like any Hugging Face tokenizer. Nothing else in icot_hf
assumes this tokenizer; GPT-2 style BPE tokenizers work everywhere too.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

DEFAULT_SYMBOLS = [str(d) for d in range(10)] + ["*", "+", "-", "=", "(", ")", "####", ".", ","]
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"


def build_digit_tokenizer(
    extra_symbols: Iterable[str] = (),
    eos_token: str = EOS_TOKEN,
    pad_token: str = PAD_TOKEN,
    unk_token: str = UNK_TOKEN,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer. The eos token doubles as the ICoT separator `S`."""
    specials = [pad_token, eos_token, unk_token]
    symbols = list(dict.fromkeys([*DEFAULT_SYMBOLS, *extra_symbols]))
    vocab = {token: i for i, token in enumerate(specials + [s for s in symbols if s not in specials])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def separator_token_id(tokenizer, separator_token: str | None = None) -> int:
    """The id of the separator `S` (the tokenizer's eos unless another token is named)."""
    token = separator_token or tokenizer.eos_token
    if token is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no eos token; pass separator_token= naming a token in its vocabulary."
        )
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"separator_token {token!r} is not in the tokenizer's vocabulary; add it or pick another.")
    return int(token_id)
