"""Configuration of a Coconut model (Hao et al. 2024, "Training Large Language Models to Reason
in a Continuous Latent Space"). It nests the full config of the base causal LM, so a saved
Coconut folder loads with no other checkpoint at hand, and names the three tokens the method
adds to the tokenizer: the start and end markers of the thought block and the latent token,
each of whose positions is fed the last hidden state of the position before it."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

START_LATENT = "<|start-latent|>"
END_LATENT = "<|end-latent|>"
LATENT = "<|latent|>"


class CoconutModelConfig(PreTrainedConfig):
    r"""A Coconut model (`CoconutForCausalLM`).

    Args:
        base_config: config of the wrapped causal LM (any decoder-only model).
        latent_token_id / start_latent_id / end_latent_id: ids of `<|latent|>`,
            `<|start-latent|>` and `<|end-latent|>` in the model's tokenizer.
        num_latent_thoughts: how many latent positions a prompt carries at inference
            (`max_latent_stage x c_thought` for a fully trained model; 0 for a CoT model);
            `CoconutForCausalLM.prompt` writes them.
        c_thought: latent positions per replaced reasoning step (recorded for the card and prompts).
        question_suffix / step_suffix / answer_prefix: the text around the parts it was trained on
            (the released defaults: newline, newline, `### `); `prompt` and `answer` use them.
    """

    model_type = "coconut"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    base_config: PreTrainedConfig | dict | None = None
    latent_token_id: int | None = None
    start_latent_id: int | None = None
    end_latent_id: int | None = None
    num_latent_thoughts: int = 0
    c_thought: int = 1
    question_suffix: str = "\n"
    step_suffix: str = "\n"
    answer_prefix: str = "### "

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.c_thought < 1:
            raise ValueError(f"c_thought must be >= 1 (latent positions per reasoning step), got {self.c_thought}")
        if self.num_latent_thoughts < 0:
            raise ValueError(f"num_latent_thoughts must be >= 0, got {self.num_latent_thoughts}")
        ids = [self.latent_token_id, self.start_latent_id, self.end_latent_id]
        if all(i is not None for i in ids) and len(set(ids)) != 3:
            raise ValueError(f"the latent, start and end token ids must differ, got {ids}")

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        # generation (its cache, its context length) reads the wrapped LM's layers
        return self.base_config.get_text_config(*args, **kwargs)
