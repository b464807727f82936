"""An ICoT-SI model as an ordinary checkpoint: `generate` and `pipeline("text-generation")`
answer with it as it was trained.

ICoT-SI with `keep_positions` trains the model with the removed chain of thought's positions
skipped: the first separator and everything after it sit `position_gap` places past their
index. A plain causal LM loaded from such weights does not know that and answers wrong
(`0 7 7 7 7 7 7 1` where the trained model says `8 7 7 7 7 7 7 1`).
`ImplicitCoTStepwiseForCausalLM` wraps the trained LM (`.lm`) and applies the gap itself:
position ids count the attention mask (left padding is skipped) and, from each row's first
separator on, are shifted by the gap, in `forward` and at every generation step. The
stepwise trainer saves its models this way whenever the gap is not 0. Positions given by the
caller are used as they are.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel, StoppingCriteriaList

from .configuration_stepwise import ImplicitCoTStepwiseConfig
from ..generation import SeparatorCountCriteria
from ..remote_code import CarriesItsCode


class ImplicitCoTStepwiseForCausalLM(CarriesItsCode, PreTrainedModel, GenerationMixin):
    """A causal LM whose positions skip the chain of thought it internalised.

    Example:
        >>> model = AutoModelForCausalLM.from_pretrained("outputs/4x4_mult/stepwise")  # after `import icot_hf`
        >>> tokenizer.padding_side = "left"
        >>> prompt = tokenizer(["1 2 3 4 * 5 6 7 8" + tokenizer.eos_token], return_tensors="pt")
        >>> model.generate(**prompt, max_new_tokens=64)  # then: the CoT it still writes (none once all is removed), S, answer, S
    """

    config_class = ImplicitCoTStepwiseConfig
    base_model_prefix = "icot"
    _supports_sdpa = True

    def __init__(self, config: ImplicitCoTStepwiseConfig):
        super().__init__(config)
        self.lm = AutoModelForCausalLM.from_config(config.base_config)
        self.post_init()

    def _init_weights(self, module):
        pass  # the wrapped LM initialised its own weights; the wrapper has none

    @classmethod
    def from_trained(cls, lm: PreTrainedModel, position_gap: int, separator_token_id: int) -> "ImplicitCoTStepwiseForCausalLM":
        """Wrap a model trained by ICoT-SI with kept positions (it shares `lm`'s weights)."""
        base_config = copy.deepcopy(lm.config)
        base_config.__dict__.pop("icot_position_gap", None)  # the wrapper applies the gap; the LM must not record it twice
        model = cls(cls.config_class(base_config=base_config, position_gap=int(position_gap), separator_token_id=int(separator_token_id),
                                     eos_token_id=lm.config.eos_token_id, pad_token_id=lm.config.pad_token_id,
                                     bos_token_id=lm.config.bos_token_id))
        model.lm = lm  # after construction, which initialises weights
        model.generation_config = copy.deepcopy(lm.generation_config)
        if getattr(lm.config, "icot_sequence_format", None):  # how prompts are laid out (icot_hf.data.sequence_format_of)
            model.config.icot_sequence_format = lm.config.icot_sequence_format
        return model

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def shifted_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Position ids of whole sequences: the mask's count, plus the gap from the first separator on."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        # padding may use the separator's id (GPT-2 pads with eos): count real tokens only
        after_separator = ((input_ids == self.config.separator_token_id) & attention_mask.bool()).long().cumsum(-1) > 0
        return positions + self.config.position_gap * after_separator.long()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        if position_ids is None and input_ids is not None and not _has_past(past):
            position_ids = self.shifted_positions(input_ids, attention_mask)  # a whole sequence (training, scoring)
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """`generate`, stopping each row after its answer: the answer ends at the second separator
        the row generates (the first ends the CoT it still writes, empty once all is removed), so
        by default the separator does not end generation, this criterion does. Pass
        `eos_token_id` or `stopping_criteria` to stop otherwise."""
        if input_ids is not None and "eos_token_id" not in kwargs and "stopping_criteria" not in kwargs:
            kwargs["eos_token_id"] = None
            kwargs["stopping_criteria"] = StoppingCriteriaList([SeparatorCountCriteria(self.config.separator_token_id, input_ids.shape[1], 2)])
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # `generate` builds the prompt's position ids here (unless the caller gave some) and extends
        # them by one a step: the prompt's, shifted from the separator on
        ids = model_kwargs.get("input_ids", inputs_tensor)
        if ids is not None and ids.dim() == 2 and not torch.is_floating_point(ids):
            return self.shifted_positions(ids, model_kwargs.get("attention_mask"))
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)


def _has_past(past_key_values) -> bool:
    if past_key_values is None:
        return False
    length = getattr(past_key_values, "get_seq_length", None)
    return bool(length()) if callable(length) else True
