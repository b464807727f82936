import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import GPT2Config, LlamaConfig  # noqa: E402

from icot_hf import build_digit_tokenizer  # noqa: E402
from icot_hf.multiplication import format_problem, sample_problems  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "icot_original"


@pytest.fixture(scope="session")
def tokenizer():
    return build_digit_tokenizer()


def tiny_config(kind: str, tokenizer, layers: int = 3, width: int = 32):
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "gpt2":
        return GPT2Config(n_layer=layers, n_embd=width, n_head=2, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if kind == "llama":
        return LlamaConfig(num_hidden_layers=layers, hidden_size=width, intermediate_size=2 * width, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, **common)
    raise ValueError(kind)


@pytest.fixture(params=["gpt2", "llama"])
def base_config(request, tokenizer):
    return tiny_config(request.param, tokenizer)


def multiplication_dataset(k: int, n: int, seed: int = 0) -> Dataset:
    rows = [format_problem(a, b, k) for a, b in sample_problems(k, n, seed)]
    return Dataset.from_dict({c: [r[c] for r in rows] for c in ("input", "cot", "answer")})


@pytest.fixture(scope="session")
def small_dataset():
    """2x2 and 3x3 problems mixed, so separator positions differ between rows."""
    two, three = multiplication_dataset(2, 12, seed=1), multiplication_dataset(3, 12, seed=2)
    rows = [two[i] for i in range(12)] + [three[i] for i in range(12)]
    rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()]
    return Dataset.from_dict({c: [r[c] for r in rows] for c in ("input", "cot", "answer")})
