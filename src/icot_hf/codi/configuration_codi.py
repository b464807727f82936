"""Configuration of a CODI model (Shen et al. 2025, "CODI: Compressing Chain-of-Thought into
Continuous Space via Self-Distillation"). It nests the full config of the base causal LM, so a saved
folder loads with no other checkpoint at hand, and records what inference needs: the ids of the
begin- and end-of-thought tokens, how many continuous thoughts to run, the projection that maps a
thought's last hidden state to the next input, and the text format it was trained on."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

BOT = "<|bot|>"
EOT = "<|eot|>"


class CODIModelConfig(PreTrainedConfig):
    r"""A CODI model (`CODIForCausalLM`).

    Args:
        base_config: config of the wrapped causal LM (any decoder-only model).
        bot_id / eot_id: ids of the begin- and end-of-thought tokens (`<|bot|>`, `<|eot|>` in the
            model's tokenizer; the released code's vocab_size + 1 and + 2).
        num_latent: continuous thoughts between the two (released GSM8K presets: 6).
        use_prj / prj_dim / prj_dropout / prj_no_ln: the projection a thought's last hidden state goes
            through before it is fed back (Dropout, Linear(hidden, prj_dim), GELU, Linear(prj_dim, hidden),
            then LayerNorm unless `prj_no_ln`); without it the state is fed back as it is.
        remove_eos: the released `remove_eos`: True writes `question <|bot|>` and `<|eot|> answer`;
            False puts eos before `<|bot|>` and after `<|eot|>`.
        answer_prefix: the text before the answer value (released: "The answer is: ").
    """

    model_type = "codi"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    base_config: PreTrainedConfig | dict | None = None
    bot_id: int | None = None
    eot_id: int | None = None
    num_latent: int = 6
    use_prj: bool = True
    prj_dim: int | None = None
    prj_dropout: float = 0.0
    prj_no_ln: bool = False
    remove_eos: bool = True
    answer_prefix: str = "The answer is: "

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_latent < 1:
            raise ValueError(f"num_latent must be >= 1 (the answer is read after the last continuous thought), got {self.num_latent}")
        if self.bot_id is not None and self.bot_id == self.eot_id:
            raise ValueError(f"bot_id and eot_id must differ, got {self.bot_id}")
        if self.prj_dim is not None and self.prj_dim < 1:
            raise ValueError(f"prj_dim must be >= 1, got {self.prj_dim}")

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        # generation (its cache, its context length) reads the wrapped LM's layers
        return self.base_config.get_text_config(*args, **kwargs)
