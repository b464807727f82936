"""Configuration of an ICoT-SI model trained with kept positions (`ImplicitCoTStepwiseForCausalLM`)."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class ImplicitCoTStepwiseConfig(PreTrainedConfig):
    r"""An ICoT-SI model trained with kept positions (`ImplicitCoTStepwiseForCausalLM`).

    Args:
        base_config: config of the wrapped causal LM (any decoder-only model).
        position_gap: how many places past its index the first separator, and everything
            after it, sits: the positions of the chain of thought the model no longer writes.
        separator_token_id: the separator that ends the question.
    """

    model_type = "icot_stepwise"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    base_config: PreTrainedConfig | dict | None = None
    position_gap: int = 0
    separator_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.position_gap < 0:
            raise ValueError(f"position_gap must be >= 0, got {self.position_gap}")

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        # generation (its cache, its context length) reads the wrapped LM's layers
        return self.base_config.get_text_config(*args, **kwargs)
