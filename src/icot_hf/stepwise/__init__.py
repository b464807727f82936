"""ICoT-SI (Deng, Choi & Shieber 2024, "From Explicit CoT to Implicit CoT: Learning to Internalize
CoT Step by Step"): the model that keeps its removed chain of thought's positions and, loaded on
first use, the trainer that removes the chain of thought while it trains."""

from .configuration_stepwise import ImplicitCoTStepwiseConfig
from .modeling_stepwise import ImplicitCoTStepwiseForCausalLM

_LAZY = {"StepwiseInternalizationConfig": ".stepwise_config", "StepwiseInternalizationTrainer": ".stepwise_trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ImplicitCoTStepwiseConfig", "ImplicitCoTStepwiseForCausalLM", *sorted(_LAZY)]
