"""Coconut (Hao et al. 2024, "Training Large Language Models to Reason in a Continuous Latent
Space"): the model, its configuration and, loaded on first use, its trainer and data helpers."""

from .configuration_coconut import END_LATENT, LATENT, START_LATENT, CoconutModelConfig
from .modeling_coconut import CoconutForCausalLM, add_latent_tokens

__all__ = ["END_LATENT", "LATENT", "START_LATENT", "CoconutModelConfig", "CoconutForCausalLM", "add_latent_tokens"]
