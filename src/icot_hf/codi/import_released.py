"""A checkpoint of CODI's released code as a `CODIForCausalLM`.

The released `train.py` saves its `CODI` module's whole state dict (`pytorch_model.bin`, or
`model.safetensors`): the wrapped LM under `codi.` (with LoRA, peft's names:
`codi.base_model.model.<module>.base_layer.weight`, `.lora_A.default.weight`, ...), the projection under
`prj.`, three rows added to the vocabulary (pad, `<|bot|>`, `<|eot|>`). Nothing else is saved, so what
the shapes do not say is given: the base model's config (`base_model`: a Hub id or folder; only its
config is read, every weight comes from the checkpoint), LoRA's alpha (the released GPT-2 run: 32), the
number of thoughts (6) and the text format (`remove_eos`, the answer prefix). The LoRA layers are merged
into the base weights by peft itself, so the folder is a plain CODI model.

A `.bin` is read with `torch.load(weights_only=True)` only: a file that needs more is refused, never
unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..reference_checkpoints import UnsafeCheckpointError
from .configuration_codi import BOT, EOT
from .modeling_codi import CODIForCausalLM, add_thought_tokens

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LORA_A = re.compile(r"^codi\.base_model\.model\.(?P<module>.+)\.lora_A\.default\.weight$")


def read_released_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: a file, or a folder holding model.safetensors or pytorch_model.bin."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no {' or '.join(WEIGHT_FILES)}; give the folder the released train.py saved into")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a pickle it will not read
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UnsafeCheckpointError(f"{path}: refused: not a plain tensor state dict that torch.load(weights_only=True) can read "
                                    f"({reason[:200]}); a checkpoint is never unpickled in full, since that could run code from the file") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UnsafeCheckpointError(f"{path}: refused: expected a dict of parameter name -> tensor, got {type(state).__name__}")
    return state


def import_codi(checkpoint: str | Path, base_model: str, tokenizer=None, lora_alpha: int = 32, num_latent: int = 6,
                remove_eos: bool = True, answer_prefix: str = "The answer is: ") -> tuple[CODIForCausalLM, object]:
    """The released checkpoint as a CODIForCausalLM (LoRA merged) and its tokenizer (the base's, with the
    released `[PAD]`, `<|bot|>`, `<|eot|>` ids checked against the checkpoint's three added rows)."""
    state = read_released_state(checkpoint)
    if not any(k.startswith("codi.") for k in state):
        raise ValueError(f"{checkpoint}: no 'codi.' weights; this is not a checkpoint of CODI's released train.py")
    lora_modules = sorted({m["module"] for k in state if (m := LORA_A.match(k))})
    prefix = "codi.base_model.model." if lora_modules else "codi."
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(base_model)
    config = AutoConfig.from_pretrained(base_model)
    lm = AutoModelForCausalLM.from_config(config)
    rows = state[next(k for k in state if k.startswith(prefix) and k.endswith(("wte.weight", "embed_tokens.weight", "embed_in.weight")))].shape[0]
    ids = add_thought_tokens(tokenizer)
    if (tokenizer.pad_token_id, ids[BOT], ids[EOT]) != (rows - 3, rows - 2, rows - 1):
        raise ValueError(f"{checkpoint}: its embeddings have {rows} rows (the released pad, <|bot|>, <|eot|> at {rows - 3}, {rows - 2}, "
                         f"{rows - 1}) but this tokenizer puts them at {tokenizer.pad_token_id}, {ids[BOT]}, {ids[EOT]}: give the base "
                         f"model's own tokenizer, without a pad token of its own")
    lm.resize_token_embeddings(rows, mean_resizing=False)
    if lora_modules:
        from peft import LoraConfig, get_peft_model

        rank = state[f"codi.base_model.model.{lora_modules[0]}.lora_A.default.weight"].shape[0]
        lm = get_peft_model(lm, LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=lora_modules))
    lm_state = {k[len("codi."):]: v for k, v in state.items() if k.startswith("codi.")}
    missing, unexpected = lm.load_state_dict(lm_state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the input embeddings
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: its weights do not fit {base_model} (missing {missing[:3]}, unexpected {unexpected[:3]}); give the "
                         f"base model it was trained from")
    if lora_modules:
        lm = lm.merge_and_unload()
    prj = {k[len("prj."):]: v for k, v in state.items() if k.startswith("prj.")}
    prj_dim = prj["1.weight"].shape[0] if prj else None
    model = CODIForCausalLM.from_base(lm, tokenizer, num_latent=num_latent, use_prj=bool(prj), prj_dim=prj_dim,
                                      prj_no_ln=bool(prj) and "ln.weight" not in prj, remove_eos=remove_eos, answer_prefix=answer_prefix)
    if prj:
        model.prj.load_state_dict(prj)
    return model.eval(), tokenizer
