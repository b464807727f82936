"""Coconut (Hao et al. 2024): a causal LM that reasons in continuous thought.

A prompt carries a block of latent positions between two markers:

    question \\n <|start-latent|> <|latent|> x n <|end-latent|>   (then, in training: steps left, ### answer, eos)

Each latent position's input is not a token embedding but the last hidden state (after the
final norm) of the position before it, so latent k depends on latent k-1's output. That makes
the forward sequential over the latent block: one pass up to the first latent, one pass per
further latent (a single position, reading the cache of everything before it), and one pass over
the rest. The KV cache carries the earlier positions between passes, so this is exactly a
single forward over the substituted embeddings, at the cost of n + 1 calls. Gradients flow
through the fed-back hidden states and the cache, as in the released code (coconut.py).

Unlike the released module, substitution is a `torch.where` on one column per pass (no Python
lists of per-position tensors), rows are left-padded so their latent blocks share columns (the
collator in `icot_hf.coconut.data` lays batches out so), and `generate` takes a batch: the
latent forward fills the cache for the prompt, then the wrapped LM's own `generate` continues
from it with its usual decoding options.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_coconut import END_LATENT, LATENT, START_LATENT, CoconutModelConfig
from ..lora_wrapper import WrapsLoRA, is_lora_folder
from ..remote_code import CarriesItsCode


class CoconutForCausalLM(WrapsLoRA, CarriesItsCode, PreTrainedModel, GenerationMixin):
    """A causal LM (`.lm`) whose `<|latent|>` positions are fed its own last hidden state.

    Example:
        >>> model = AutoModelForCausalLM.from_pretrained("outputs/4x4_mult/coconut")  # after `import icot_hf`
        >>> tokenizer = AutoTokenizer.from_pretrained("outputs/4x4_mult/coconut", padding_side="left")
        >>> prompts = tokenizer([model.prompt(q) for q in questions], return_tensors="pt", padding=True)
        >>> model.generate(**prompts, max_new_tokens=64)  # the steps it still writes, then ### answer, eos
    """

    config_class = CoconutModelConfig
    base_model_prefix = "coconut"
    _supports_sdpa = True

    def __init__(self, config: CoconutModelConfig):
        super().__init__(config)
        self.lm = AutoModelForCausalLM.from_config(config.base_config)
        self.post_init()

    def _init_weights(self, module):
        pass  # the wrapped LM initialised its own weights; the wrapper has none

    # ------------------------------------------------------------------ building
    @classmethod
    def from_base(cls, lm: PreTrainedModel, tokenizer, num_latent_thoughts: int = 0, c_thought: int = 1,
                  init_token: str = "<<") -> "CoconutForCausalLM":
        """Wrap a (CoT-trained) causal LM: add the three tokens to `tokenizer` (in place) and to the
        LM's embeddings, each new row (input embedding and output row) a copy of `init_token`'s, as the
        released run.py does (it uses GSM8K's `<<`; pick a token the data has)."""
        if c_thought < 1:
            raise ValueError(f"c_thought must be >= 1 (latent positions per reasoning step), got {c_thought}")
        init_id = _token_id(tokenizer, init_token)
        if init_id is None:
            raise ValueError(f"latent_init_token {init_token!r} is not one token of the tokenizer; name a token it has "
                             f"(the new tokens' embeddings start as a copy of it), e.g. {tokenizer.eos_token!r}")
        ids = add_latent_tokens(tokenizer)
        if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        elif max(ids.values()) >= lm.get_input_embeddings().weight.shape[0]:
            raise ValueError(f"the tokenizer's latent tokens {ids} lie outside the model's {lm.get_input_embeddings().weight.shape[0]} embeddings")
        with torch.no_grad():
            embeddings = lm.get_input_embeddings().weight
            head = lm.get_output_embeddings()
            for token_id in ids.values():
                embeddings[token_id] = embeddings[init_id]
                if head is not None and head.weight is not embeddings:
                    head.weight[token_id] = head.weight[init_id]
        base_config = copy.deepcopy(lm.config)
        config = cls.config_class(base_config=base_config, latent_token_id=ids[LATENT], start_latent_id=ids[START_LATENT],
                                  end_latent_id=ids[END_LATENT], num_latent_thoughts=int(num_latent_thoughts),
                                  c_thought=int(c_thought), eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                                  bos_token_id=lm.config.bos_token_id)
        model = cls(config)
        model.lm = lm  # after construction, which initialises weights
        model.generation_config = copy.deepcopy(lm.generation_config)
        return model

    # ------------------------------------------------------------------ LoRA (lora_wrapper.py)
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A saved Coconut folder; a LoRA-trained one (adapter + the base it sits on) loads the same way."""
        if is_lora_folder(pretrained_model_name_or_path):
            return cls.from_lora_checkpoint(str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def add_lora(self, lora_config):
        """LoRA on the wrapped LM. The three new tokens' rows start as copies of an existing
        token's and the released code trains them with everything else, so unless the config
        says which token rows or modules to train, theirs are trained (peft's
        `trainable_token_indices`: those rows of the input embedding, and of the output layer
        where it is tied to it), nothing else of the embeddings."""
        lora_config = copy.deepcopy(lora_config)
        if getattr(lora_config, "trainable_token_indices", None) is None and not getattr(lora_config, "modules_to_save", None):
            lora_config.trainable_token_indices = sorted({self.config.latent_token_id, self.config.start_latent_id, self.config.end_latent_id})
        return super().add_lora(lora_config)

    def check_tokenizer(self, tokenizer) -> None:
        """The tokenizer must hold the three tokens at this model's ids."""
        expected = {LATENT: self.config.latent_token_id, START_LATENT: self.config.start_latent_id, END_LATENT: self.config.end_latent_id}
        found = {token: _token_id(tokenizer, token) for token in expected}
        if found != expected:
            raise ValueError(f"the tokenizer holds the Coconut tokens at {found} but the model was trained with {expected}; "
                             f"use the tokenizer saved with the model")

    def prompt(self, question: str, num_latent_thoughts: int | None = None, question_suffix: str | None = None) -> str:
        """The text to generate from: the question, then the thought block (`num_latent_thoughts`
        latents, the model's own number by default)."""
        n = self.config.num_latent_thoughts if num_latent_thoughts is None else num_latent_thoughts
        suffix = self.config.question_suffix if question_suffix is None else question_suffix
        return question + suffix + START_LATENT + LATENT * n + END_LATENT

    @torch.no_grad()
    def answer(self, questions: list[str], tokenizer, max_new_tokens: int = 64, return_steps: bool = False):
        """Answers to `questions` (strings), in one left-padded batch: the text after the answer
        marker's last '#' as the released evaluation reads it. With `return_steps`, also how many
        tokens each wrote before its answer (the reasoning steps it still writes out)."""
        if isinstance(questions, str):
            raise TypeError("answer() takes a list of questions")
        self.check_tokenizer(tokenizer)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            batch = tokenizer([self.prompt(q) for q in questions], return_tensors="pt", padding=True, add_special_tokens=True)
        finally:
            tokenizer.padding_side = side
        batch = {k: v.to(self.device) for k, v in batch.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = self.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        marker = tokenizer.encode(self.config.answer_prefix.strip(), add_special_tokens=False)
        answers, steps = [], []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[:row.index(tokenizer.eos_token_id)]
            start = next((i for i in range(len(row)) if marker and row[i:i + len(marker)] == marker), len(row))
            steps.append(start)
            answers.append(tokenizer.decode(row, skip_special_tokens=True).split("#")[-1].replace(",", "").strip())
        return (answers, steps) if return_steps else answers

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    # ------------------------------------------------------------------ forward
    def latent_columns(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """For each latent pass k: the column of every row's k-th latent, and which rows have one.
        Rows must agree on that column (left-pad so the blocks line up); the first latent needs a
        position before it."""
        is_latent = (input_ids == self.config.latent_token_id) & attention_mask.bool()
        rank = is_latent.long().cumsum(-1) - 1
        passes = []
        for k in range(int(is_latent.sum(-1).max())):
            at_k = is_latent & (rank == k)
            has = at_k.any(-1)
            columns = at_k.long().argmax(-1)[has].unique()
            if columns.numel() != 1:
                raise ValueError(f"latent thought {k} sits at different columns across the batch ({columns.tolist()}): left-pad the "
                                 f"rows so their thought blocks line up (icot_hf.coconut.CoconutCollator does; for generation, "
                                 f"prompts ending with the block and padding_side='left')")
            column = int(columns)
            if k == 0 and column == 0:
                raise ValueError("a latent thought is the first token of a row: it has no position before it to read")
            passes.append((column, has))
        if passes:
            start_rows = (input_ids == self.config.start_latent_id) & attention_mask.bool()
            missing = ~start_rows.any(-1) & passes[0][1]
            if missing.any():
                raise ValueError(f"rows {missing.nonzero().flatten().tolist()} hold {LATENT} but no {START_LATENT} before it: "
                                 f"write prompts with CoconutForCausalLM.prompt(question)")
        return passes

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, past_key_values=None,
                use_cache=None, inputs_embeds=None, **kwargs):
        past = past_key_values if past_key_values is not None else kwargs.pop("cache", None)
        if input_ids is None or _has_past(past) or not (input_ids == self.config.latent_token_id).any():
            # decoding steps after the prompt, or a sequence without thoughts: the plain LM
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                           past_key_values=past, use_cache=use_cache, inputs_embeds=inputs_embeds, **kwargs)
        return self.latent_forward(input_ids, attention_mask, position_ids, labels=labels, use_cache=bool(use_cache), **kwargs)

    def latent_forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, use_cache=False,
                       logits_to_keep: int | None = None, **kwargs):
        """The multi-pass forward. `logits_to_keep=1` returns only the last position's logits
        (generation's prefill); the loss, when `labels` are given, is the mean next-token
        cross-entropy over labelled positions, as in the released code."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        passes = self.latent_columns(input_ids, attention_mask)
        embeds = self.lm.get_input_embeddings()(input_ids)
        cache = DynamicCache(config=self.config.get_text_config())
        bounds = [column for column, _ in passes] + [input_ids.shape[1]]
        logits, start, fed = [], 0, None
        for k, end in enumerate(bounds):
            chunk = embeds[:, start:end]
            if fed is not None:  # this pass starts at latent k-1: feed it the state of the position before
                rows = passes[k - 1][1]
                first = torch.where(rows[:, None], fed.to(chunk.dtype), chunk[:, 0])
                chunk = torch.cat([first[:, None], chunk[:, 1:]], dim=1)
            final = k == len(bounds) - 1
            keep = (logits_to_keep or 0) if final else (1 if logits_to_keep else 0)  # prefill: no logits but the last
            out = self.lm(inputs_embeds=chunk, attention_mask=attention_mask[:, :end], position_ids=position_ids[:, start:end],
                          cache=cache, use_cache=True, output_hidden_states=not final, logits_to_keep=keep, **kwargs)
            if not final:
                fed = out.hidden_states[-1][:, -1]  # the last layer's output, after the final norm
            logits.append(out.logits)
            start = end
        logits = logits[-1] if logits_to_keep else torch.cat(logits, dim=1)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device))
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache else None)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """Batched generation from left-padded prompts that end with the thought block (see `prompt`).
        The latent forward fills the KV cache for all of the prompt but its last token; the wrapped
        LM's `generate` goes on from there with any of its decoding options (greedy by default;
        stops at eos)."""
        if input_ids is None or not (input_ids == self.config.latent_token_id).any():
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if kwargs.get("past_key_values") is not None:
            raise ValueError("CoconutForCausalLM.generate fills its own cache from the prompt; do not pass past_key_values")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if (input_ids[:, -1] == self.config.latent_token_id).any():
            raise ValueError(f"a prompt ends inside its thought block: end it with {END_LATENT} (CoconutForCausalLM.prompt)")
        if attention_mask[:, :-1].sum(-1).eq(attention_mask.sum(-1)).any():
            raise ValueError("prompts must be left-padded (tokenizer.padding_side = 'left')")
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        prefill = self.latent_forward(input_ids[:, :-1], attention_mask[:, :-1], position_ids[:, :-1], use_cache=True, logits_to_keep=1)
        kwargs.setdefault("generation_config", self.generation_config)
        return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, cache=prefill.past_key_values, **kwargs)


def add_latent_tokens(tokenizer) -> dict[str, int]:
    """Add `<|start-latent|>`, `<|end-latent|>`, `<|latent|>` (in the released order) where missing;
    their ids."""
    for token in (START_LATENT, END_LATENT, LATENT):
        if _token_id(tokenizer, token) is None:
            tokenizer.add_tokens(token)
    return {token: _token_id(tokenizer, token) for token in (START_LATENT, END_LATENT, LATENT)}


def _token_id(tokenizer, token: str) -> int | None:
    """The id of `token` if it is one token of the vocabulary (not the unknown token)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def _has_past(past_key_values) -> bool:
    if past_key_values is None:
        return False
    length = getattr(past_key_values, "get_seq_length", None)
    return bool(length()) if callable(length) else True
