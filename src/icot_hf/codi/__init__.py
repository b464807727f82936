"""CODI (Shen et al. 2025, "CODI: Compressing Chain-of-Thought into Continuous Space via
Self-Distillation"): the model, its configuration and, loaded on first use, its trainer and data helpers."""

from .configuration_codi import BOT, EOT, CODIModelConfig
from .modeling_codi import CODIForCausalLM, CODILoss, add_thought_tokens

__all__ = ["BOT", "EOT", "CODIModelConfig", "CODIForCausalLM", "CODILoss", "add_thought_tokens"]
