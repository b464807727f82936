import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _private_torch_extensions() -> None:
    """DeepSpeed JIT-builds its CPU ops (shm comm, CPU Adam) into TORCH_EXTENSIONS_DIR, by default
    ~/.cache/torch_extensions: one folder for every venv on the machine (each venv's different include
    paths force a rebuild there), guarded by a `lock` file that a build killed midway leaves behind.
    Every later build then waits on that lock forever: CI hung on all four DeepSpeed launches, each
    until its subprocess timeout, behind a lock left by a killed run of the suite. The tests build into
    their venv's own folder instead, and a lock there older than any build (~2 min) is a dead one."""
    import sys
    import time
    from pathlib import Path

    folder = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))
    for lock in folder.glob("*/lock"):
        if time.time() - lock.stat().st_mtime > 20 * 60:
            lock.unlink(missing_ok=True)


_private_torch_extensions()

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
