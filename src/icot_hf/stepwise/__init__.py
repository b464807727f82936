"""ICoT-SI (Deng, Choi & Shieber 2024, "From Explicit CoT to Implicit CoT: Learning to Internalize
CoT Step by Step"): the model that keeps its removed chain of thought's positions and, loaded on
first use, the trainer that removes the chain of thought while it trains."""

from .configuration_stepwise import ImplicitCoTStepwiseConfig
from .modeling_stepwise import ImplicitCoTStepwiseForCausalLM
from ..lazy import lazy_attributes

_LAZY = {"StepwiseInternalizationConfig": ".stepwise_config", "StepwiseInternalizationTrainer": ".stepwise_trainer"}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["ImplicitCoTStepwiseConfig", "ImplicitCoTStepwiseForCausalLM", *sorted(_LAZY)]
