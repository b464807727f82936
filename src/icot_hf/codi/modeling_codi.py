"""CODI (Shen et al. 2025): a causal LM that reasons in continuous thoughts, trained as its own teacher.

At inference a prompt is the question followed by `<|bot|>`:

    question <|bot|>  h1 h2 ... hN  <|eot|> The answer is: 42 <eos>

The last hidden state at `<|bot|>` goes through the projection (`prj`) and is fed back as the next
input embedding, N times (`num_latent`); then `<|eot|>` is fed and the answer is decoded as text.
Each thought needs the one before it, so that is one pass for the question and one per thought, the
KV cache carrying everything before; the answer is then decoded by the wrapped LM's own `generate`
from that cache, batched, with any of its decoding options.

Training (CODITrainer) runs the same model twice over each example, as its own teacher and student:
the teacher reads `question CoT answer` as text, the student `question <|bot|> thoughts <|eot|> answer`,
and the student's hidden states at the token before the answer value are pulled toward the
teacher's there, at every layer (`forward` with the batch's `encoder_input_ids`/`decoder_input_ids`/
`ref_input_ids`; `CODILoss` holds the loss's settings).

Padding. The released code left-pads questions and passes their mask only to the question's own pass:
positions count the padding, and the thoughts and the answer attend to the padded positions (its
`fix_attn_mask` masks them for the answer only). `CODILoss(mask_padding=False)` trains exactly so, as
released. `generate` masks the padding everywhere and numbers positions from each row's first token,
so a batch answers as each prompt would alone (what the released code's batch-1 evaluation does).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_codi import BOT, EOT, CODIModelConfig
from ..lora_wrapper import WrapsLoRA, is_lora_folder
from ..remote_code import CarriesItsCode

DISTILL_LOSSES = ("smooth_l1", "l2", "l1")


@dataclass
class CODILoss:
    """The training loss's settings (the released defaults; CODIConfig carries them).

    distill_loss_type: distance between student and teacher states (smooth_l1, l2 or l1).
    distill_loss_div_std: divide each layer's distance by the std of the teacher's states there
        (twice for l2, as released).
    distill_loss_factor / ref_loss_factor: weights of the distillation and of the teacher's own CoT loss.
    fix_attn_mask: the released flag: mask the question's padding for the answer's pass.
    mask_padding: mask the padding in every pass and number positions from each row's first token
        (not in the released code; exact for any batch layout, as `generate` is).
    """

    distill_loss_type: str = "smooth_l1"
    distill_loss_div_std: bool = False
    distill_loss_factor: float = 1.0
    ref_loss_factor: float = 1.0
    fix_attn_mask: bool = False
    mask_padding: bool = False

    def __post_init__(self):
        if self.distill_loss_type not in DISTILL_LOSSES:
            raise ValueError(f"distill_loss_type must be one of {DISTILL_LOSSES}, got {self.distill_loss_type!r}")


@dataclass
class CODIOutput(ModelOutput):
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    distill_loss: torch.Tensor | None = None
    ref_ce_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def build_projection(config: CODIModelConfig, hidden: int) -> nn.Sequential:
    """The released projection, module for module (so state-dict keys match: prj.1, prj.3, prj.ln)."""
    width = config.prj_dim or hidden
    projection = nn.Sequential(nn.Dropout(config.prj_dropout), nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, hidden))
    if not config.prj_no_ln:
        projection.add_module("ln", nn.LayerNorm(hidden))
    return projection


class CODIForCausalLM(WrapsLoRA, CarriesItsCode, PreTrainedModel, GenerationMixin):
    """A causal LM (`.lm`) with CODI's continuous thoughts and projection (`.prj`).

    Example:
        >>> model = AutoModelForCausalLM.from_pretrained("outputs/gsm8k/codi")  # after `import icot_hf`
        >>> tokenizer = AutoTokenizer.from_pretrained("outputs/gsm8k/codi")
        >>> model.answer(["Tom has 3 apples and buys 4 more. How many apples does he have?"], tokenizer)
        ['7']
    """

    config_class = CODIModelConfig
    base_model_prefix = "codi"
    _supports_sdpa = True

    def __init__(self, config: CODIModelConfig):
        super().__init__(config)
        self.lm = AutoModelForCausalLM.from_config(config.base_config)
        self.prj = build_projection(config, config.get_text_config().hidden_size) if config.use_prj else None
        self.post_init()

    def _init_weights(self, module):
        pass  # the wrapped LM initialised its own weights; the projection keeps torch's initialisation, as released

    # ------------------------------------------------------------------ building
    @classmethod
    def from_base(cls, lm: PreTrainedModel, tokenizer, num_latent: int = 6, use_prj: bool = True, prj_dim: int | None = None,
                  prj_dropout: float = 0.0, prj_no_ln: bool = False, remove_eos: bool = True,
                  answer_prefix: str = "The answer is: ") -> "CODIForCausalLM":
        """Wrap a causal LM: give `tokenizer` (in place) a pad token where it has none (`[PAD]`, as released)
        and the `<|bot|>`/`<|eot|>` tokens, and the LM embeddings for them (transformers' mean-resizing, as the
        released `resize_token_embeddings` does). GPT-2 gets the released ids: pad 50257, bot 50258, eot 50259."""
        ids = add_thought_tokens(tokenizer)
        if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
            lm.resize_token_embeddings(len(tokenizer))
        base_config = copy.deepcopy(lm.config)
        config = cls.config_class(base_config=base_config, bot_id=ids[BOT], eot_id=ids[EOT], num_latent=int(num_latent), use_prj=use_prj,
                                  prj_dim=prj_dim, prj_dropout=prj_dropout, prj_no_ln=prj_no_ln, remove_eos=remove_eos,
                                  answer_prefix=answer_prefix, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=lm.config.bos_token_id)
        model = cls(config)
        model.lm = lm  # after construction, which initialises weights
        model.generation_config = copy.deepcopy(lm.generation_config)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A saved CODI folder; a LoRA-trained one (adapter + the base it sits on) loads the same way."""
        if is_lora_folder(pretrained_model_name_or_path):
            return cls.from_lora_checkpoint(str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def check_tokenizer(self, tokenizer) -> None:
        """The tokenizer must hold `<|bot|>`/`<|eot|>` at this model's ids."""
        found = {BOT: tokenizer.convert_tokens_to_ids(BOT), EOT: tokenizer.convert_tokens_to_ids(EOT)}
        expected = {BOT: self.config.bot_id, EOT: self.config.eot_id}
        if found != expected:
            raise ValueError(f"the tokenizer holds the CODI tokens at {found} but the model was trained with {expected}; "
                             f"use the tokenizer saved with the model")

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def project(self, state: torch.Tensor) -> torch.Tensor:
        """A thought's last hidden state -> the next thought's input embedding."""
        return self.prj(state) if self.prj is not None else state

    # ------------------------------------------------------------------ the continuous thoughts
    def think(self, input_ids, attention_mask, num_latent: int | None = None, mask_padding: bool = True):
        """Run the question (ending with `<|bot|>`) and `num_latent` thoughts. Returns the cache and, with
        `mask_padding`, the attention mask and position of what comes next (None otherwise: the released
        passes after the question take no mask and count positions from the cache's length)."""
        n = self.config.num_latent if num_latent is None else num_latent
        if mask_padding:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, output_hidden_states=True)
            after = attention_mask.long().sum(-1, keepdim=True)
        else:
            out = self.lm(input_ids=input_ids, attention_mask=released_question_mask(attention_mask, self.lm.dtype), use_cache=True,
                          output_hidden_states=True)
        cache, mask = out.cache, attention_mask
        thought = self.project(out.hidden_states[-1][:, -1:])
        for i in range(n):
            kwargs = {}
            if mask_padding:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                kwargs = dict(attention_mask=mask, position_ids=after + i)
            out = self.lm(inputs_embeds=thought, cache=cache, use_cache=True, output_hidden_states=True, **kwargs)
            cache = out.cache
            if i < n - 1:  # the last thought's output is not fed anywhere (the released loop projects it and drops it)
                thought = self.project(out.hidden_states[-1][:, -1:])
        return cache, (mask if mask_padding else None), (after + n if mask_padding else None)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, past_key_values=None, use_cache=None,
                inputs_embeds=None, encoder_input_ids=None, decoder_input_ids=None, ref_input_ids=None, **kwargs):
        """With `encoder_input_ids` (a CODI training batch, see `CODITrainer`): the self-distillation loss.
        Otherwise the wrapped LM (the decoding steps of `generate`)."""
        if encoder_input_ids is not None:
            return self.codi_loss(encoder_input_ids=encoder_input_ids, decoder_input_ids=decoder_input_ids, ref_input_ids=ref_input_ids,
                                  labels=labels, **kwargs)
        cache = past_key_values if past_key_values is not None else kwargs.pop("cache", None)
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels, cache=cache,
                       use_cache=use_cache, inputs_embeds=inputs_embeds, **kwargs)

    def codi_loss(self, encoder_input_ids, encoder_attention_mask, decoder_input_ids, labels, ref_input_ids, ref_attention_mask, ref_labels,
                  ref_distill_position, model_distill_position, decoder_attention_mask=None, loss_settings: CODILoss | None = None):
        """The released CODI.forward's loss: the student's answer cross-entropy after the thoughts, plus
        `distill_loss_factor` x the mean over layers of the distance between the student's and the detached
        teacher's hidden states at the token before the answer value, plus `ref_loss_factor` x the teacher's
        CoT-and-answer cross-entropy. The teacher pass runs once where dropout is off (its detached states
        are what the released no-grad pass computes); with dropout on, twice, as released."""
        settings = loss_settings or CODILoss()
        mask_padding = settings.mask_padding
        ref_mask = ref_attention_mask if (settings.fix_attn_mask or mask_padding) else None
        if has_active_dropout(self.lm):
            with torch.no_grad():
                targets = self.lm(input_ids=ref_input_ids, attention_mask=ref_mask, output_hidden_states=True).hidden_states
            teacher = self.lm(input_ids=ref_input_ids, attention_mask=ref_mask, output_hidden_states=True)
        else:
            teacher = self.lm(input_ids=ref_input_ids, attention_mask=ref_mask, output_hidden_states=True)
            targets = teacher.hidden_states  # detached where they are read (distill_loss)
        n = self.config.num_latent
        cache, _, after = self.think(encoder_input_ids, encoder_attention_mask, n, mask_padding=mask_padding)

        answer_embeds = self.lm.get_input_embeddings()(decoder_input_ids)
        kwargs = {}
        if mask_padding or settings.fix_attn_mask:
            answer_mask = decoder_attention_mask if (mask_padding and decoder_attention_mask is not None) else torch.ones_like(decoder_input_ids)
            kwargs["attention_mask"] = torch.cat([encoder_attention_mask, encoder_attention_mask.new_ones(encoder_attention_mask.shape[0], n),
                                                  answer_mask.to(encoder_attention_mask.dtype)], dim=1)
            if mask_padding:
                kwargs["position_ids"] = after + torch.arange(decoder_input_ids.shape[1], device=after.device)
        student = self.lm(inputs_embeds=answer_embeds, cache=cache, use_cache=True, output_hidden_states=True, **kwargs)

        distill = distill_loss(student.hidden_states, targets, model_distill_position, ref_distill_position, settings)
        ce = next_token_loss(student.logits, labels)
        ref_ce = next_token_loss(teacher.logits, ref_labels) * settings.ref_loss_factor
        distill = distill * settings.distill_loss_factor
        return CODIOutput(loss=ce + distill + ref_ce, ce_loss=ce.detach(), distill_loss=distill.detach(), ref_ce_loss=ref_ce.detach(),
                          logits=student.logits)

    # ------------------------------------------------------------------ generation
    def prompt(self, question: str, tokenizer) -> str:
        """The prompt as text, for `pipeline("text-generation")`: the question, eos unless `remove_eos`, `<|bot|>`.

        >>> generator = pipeline("text-generation", model="outputs/gsm8k/codi")
        >>> generator(generator.model.prompt(question, generator.tokenizer), max_new_tokens=32, do_sample=False)
        """
        return question + ("" if self.config.remove_eos else tokenizer.eos_token) + BOT

    def prompt_ids(self, tokenizer, questions: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompts: each question's tokens, eos unless `remove_eos`, then `<|bot|>`."""
        tail = ([] if self.config.remove_eos else [tokenizer.eos_token_id]) + [self.config.bot_id]
        rows = [tokenizer(q, add_special_tokens=True)["input_ids"] + tail for q in questions]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return {"input_ids": ids, "attention_mask": mask}

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, num_latent: int | None = None, **kwargs):
        """Batched generation from left-padded prompts that end with `<|bot|>` (see `prompt_ids`): the
        question and the thoughts fill the KV cache, then the wrapped LM's `generate` decodes from
        `<|eot|>` (and eos unless `remove_eos`) with any of its options (greedy by default; `<|eot|>`
        itself is never emitted, as in the released decoding). The returned ids are the prompt, one
        `<|bot|>` per thought (placeholders for the continuous inputs), the `<|eot|>` block, then the answer.
        The KV cache is always on: it is where the thoughts are."""
        if input_ids is None or not (input_ids[:, -1] == self.config.bot_id).all():
            raise ValueError(f"CODI prompts end with {BOT} (CODIForCausalLM.prompt_ids writes them)")
        if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
            raise ValueError("CODIForCausalLM.generate fills its own cache from the prompt; do not pass one")
        if kwargs.get("use_cache") is False:
            raise ValueError("CODIForCausalLM.generate needs the KV cache (use_cache=True): the thoughts exist only there")
        # always on: a folder saved after training has use_cache=False in its config, and without the cache the
        # decoding would recompute every step from the token ids, where the thoughts are placeholders (measured:
        # 1.6 examples/s at batch 64 on the 4x4 preset's model)
        kwargs["use_cache"] = True
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask[:, :-1].sum(-1).eq(attention_mask.sum(-1)).any():
            raise ValueError("prompts must be left-padded (tokenizer.padding_side = 'left')")
        n = self.config.num_latent if num_latent is None else num_latent
        cache, mask, _ = self.think(input_ids, attention_mask, n, mask_padding=True)
        start = [self.config.eot_id] + ([] if self.config.remove_eos else [self.config.eos_token_id])
        rows = input_ids.shape[0]
        placeholders = input_ids.new_full((rows, n), self.config.bot_id)
        full = torch.cat([input_ids, placeholders, input_ids.new_tensor(start).expand(rows, -1)], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(rows, len(start))], dim=1)
        for name in ("eos_token_id", "pad_token_id"):  # this folder's generation settings, not the wrapped LM's defaults
            if "generation_config" not in kwargs and getattr(self.generation_config, name, None) is not None:
                kwargs.setdefault(name, getattr(self.generation_config, name))
        suppress = list(kwargs.pop("suppress_tokens", None) or []) + [self.config.eot_id]
        return self.lm.generate(input_ids=full, attention_mask=full_mask, cache=cache, suppress_tokens=suppress, **kwargs)

    @torch.no_grad()
    def answer(self, questions: list[str], tokenizer, max_new_tokens: int = 64, num_latent: int | None = None) -> list[str]:
        """Answers to `questions`, in one batch: the decoded text after the answer prefix, up to a second one
        (the released evaluation reads the last number of the decoded text)."""
        if isinstance(questions, str):
            raise TypeError("answer() takes a list of questions")
        self.check_tokenizer(tokenizer)
        batch = self.prompt_ids(tokenizer, questions)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = self.generate(**batch, num_latent=num_latent, max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        start = batch["input_ids"].shape[1] + (self.config.num_latent if num_latent is None else num_latent) + (1 if self.config.remove_eos else 2)
        texts = tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
        prefix = self.config.answer_prefix.strip()
        # the text after the prefix, up to where a model that did not stop at eos starts another
        return [text.split(prefix)[1].strip() if prefix and prefix in text else text.strip() for text in texts]


def released_question_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The question pass's 4D additive mask as the released stack (transformers 4.52, sdpa) built it from a
    left-padded 2D mask: 0 where a position may attend (causal, real tokens), the dtype's minimum elsewhere.
    A padding position may attend to nothing, so its row is the minimum throughout, and softmax over a row
    of equal values spreads it evenly over every position, later ones included. The thoughts and the answer
    attend to those padding positions in the released code, so their states are part of what it trains on
    (and the gradient through them)."""
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def distill_loss(student_states, teacher_states, student_position, teacher_position, settings: CODILoss) -> torch.Tensor:
    """Mean over layers (embeddings included) of the distance between the student's state at
    `student_position` and the teacher's at `teacher_position`, row by row; divided by the teacher's std
    there (the std of that layer's selected states, over the batch) with `distill_loss_div_std`."""
    loss_fn = {"smooth_l1": nn.functional.smooth_l1_loss, "l2": nn.functional.mse_loss, "l1": nn.functional.l1_loss}[settings.distill_loss_type]
    rows = torch.arange(student_position.shape[0], device=student_position.device)
    total = 0.0
    for student, teacher in zip(student_states, teacher_states):
        target = teacher[rows, teacher_position].detach()
        layer = loss_fn(student[rows, student_position].float(), target.float())
        if settings.distill_loss_div_std:
            std = target.float().std()
            layer = layer / std / std if settings.distill_loss_type == "l2" else layer / std
        total = total + layer
    return total / len(student_states)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (labels unshifted, -100 elsewhere)."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100)


def has_active_dropout(module: nn.Module) -> bool:
    """Whether a forward pass in this mode is random: a Dropout with p > 0 in training mode, or an
    attention dropout the model applies functionally (Llama's `attention_dropout`)."""
    if not module.training:
        return False
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()):
        return True
    config = getattr(module, "config", None)
    return bool(getattr(config, "attention_dropout", 0.0) or 0.0)


def add_thought_tokens(tokenizer) -> dict[str, int]:
    """A pad token where the tokenizer has none (`[PAD]`, as the released code adds), then `<|bot|>` and
    `<|eot|>` where missing; their ids."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    missing = [t for t in (BOT, EOT) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {BOT: tokenizer.convert_tokens_to_ids(BOT), EOT: tokenizer.convert_tokens_to_ids(EOT)}
