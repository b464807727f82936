"""LoRA on the causal LM that an icot_hf model wraps (`self.lm`), and LoRA folders that load alone.

A LoRA-trained folder holds the adapter (`lora_adapter/`), the frozen base LM it was trained on
(`lora_base/`), the wrapper's own weights (`icot_modules.safetensors`) and the config. The base
travels with the folder: the LM a method adapts is often not a Hub model but an earlier stage's
weights (a teacher trained here, with tokens added for Coconut), so the adapter records no base path
of its own (`base_model_name_or_path: null`) and the folder loads from anywhere. Shared by ICoT-KD's
student and emulator and by Coconut.
"""

from __future__ import annotations

import copy
import json
import os

from transformers import AutoModelForCausalLM, PreTrainedModel

LORA_ADAPTER_DIR = "lora_adapter"
LORA_BASE_DIR = "lora_base"
NON_BASE_WEIGHTS = "icot_modules.safetensors"
ADAPTER_ONLY = ("lora_", "trainable_tokens_delta")  # what peft adds; the rest of its state is the base's
BASE_LAYER = (".token_adapter.base_layer.", ".base_layer.")  # peft's names for a wrapped module's own weights


def is_lora_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(str(path), LORA_ADAPTER_DIR, "adapter_config.json"))


class WrapsLoRA:
    """Mixin for a `PreTrainedModel` whose causal LM is `self.lm`: add, merge, save and load LoRA."""

    @property
    def has_lora(self) -> bool:
        return hasattr(self.lm, "peft_config")

    def add_lora(self, lora_config):
        """Wrap the base LM with LoRA adapters. Only the base LM is adapted (and frozen apart from
        its adapters and any token rows the config trains); the wrapper's own modules stay trainable."""
        from peft import get_peft_model

        self.lm = get_peft_model(self.lm, lora_config)
        return self

    def merge_lora(self):
        """Fold the adapters into the base weights: a plain model again (saves and loads as usual)."""
        if self.has_lora:
            self.lm = self.lm.merge_and_unload()
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        """With LoRA: adapter, frozen base, the wrapper's own weights and the config (see the module)."""
        if not self.has_lora:
            return super().save_pretrained(save_directory, *args, **kwargs)
        from safetensors.torch import save_file

        if not kwargs.get("is_main_process", True):
            return None
        os.makedirs(save_directory, exist_ok=True)
        adapter_dir = os.path.join(save_directory, LORA_ADAPTER_DIR)
        self.lm.save_pretrained(adapter_dir)
        adapter_config = os.path.join(adapter_dir, "adapter_config.json")
        with open(adapter_config, encoding="utf-8") as handle:
            settings = json.load(handle)
        settings["base_model_name_or_path"] = None
        with open(adapter_config, "w", encoding="utf-8") as handle:
            json.dump(settings, handle, indent=2)
        self._frozen_base().save_pretrained(os.path.join(save_directory, LORA_BASE_DIR))
        rest = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("lm.")}
        save_file(rest, os.path.join(save_directory, NON_BASE_WEIGHTS), metadata={"format": "pt"})
        self.config.save_pretrained(save_directory)
        return None

    def _frozen_base(self) -> PreTrainedModel:
        """A copy of the base LM without its LoRA layers (the weights the adapters sit on)."""
        wrapped = self.lm.get_base_model()
        weights = {}
        for key, value in wrapped.state_dict().items():
            if any(part in key for part in ADAPTER_ONLY):
                continue
            for marker in BASE_LAYER:
                key = key.replace(marker, ".")
            weights[key] = value
        base = AutoModelForCausalLM.from_config(copy.deepcopy(wrapped.config))
        base.load_state_dict(weights, strict=True)
        return base

    @classmethod
    def from_lora_checkpoint(cls, path: str, base_model: str | None = None):
        """Load a folder written by `save_pretrained` of a LoRA-wrapped model: base LM from
        `base_model` (default: the base saved with the folder), adapter, then the other weights."""
        from peft import PeftModel
        from safetensors.torch import load_file

        config = cls.config_class.from_pretrained(path)
        adapter_dir = os.path.join(path, LORA_ADAPTER_DIR)
        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as handle:
            recorded = json.load(handle).get("base_model_name_or_path")
        saved_base = os.path.join(path, LORA_BASE_DIR)  # the base saved with the folder (always, since it travels)
        base = base_model or (saved_base if os.path.isfile(os.path.join(saved_base, "config.json")) else recorded)
        if not base:
            raise ValueError(f"{adapter_dir}: the adapter records no base model; pass base_model= (the LM it was trained on)")
        model = cls(config)
        model.lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)
        missing, unexpected = model.load_state_dict(load_file(os.path.join(path, NON_BASE_WEIGHTS)), strict=False)
        stray = [k for k in missing if not k.startswith("lm.")]
        if stray or unexpected:
            raise ValueError(f"{path}: weights do not match the model (missing {stray[:3]}, unexpected {unexpected[:3]})")
        return model
