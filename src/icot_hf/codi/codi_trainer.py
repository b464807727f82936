"""`CODITrainer`: CODI's self-distillation on a `transformers.Trainer`.

What the released train.py does, and where it lives here:
- its data handling (`SupervisedDataset`, `preprocess`): `icot_hf.codi.data`, mapped once and cached by
  `datasets`; its collator: `CODICollator`;
- its loss (`CODI.forward`): `CODIForCausalLM.codi_loss`, called through the model's forward so DDP
  and DeepSpeed see one forward per step; the teacher pass runs once where dropout is off;
- its `CustomTrainer`: one mean loss per micro-batch divided by the accumulation steps (also in an
  epoch's last, shorter accumulation, as its transformers 4.52 did), the three
  parts logged (`ce_loss`, `distill_loss`, `ref_ce_loss`, averaged over the logging interval here);
  HF's AdamW (no decay on biases and norms), warm-up, schedule and clipping as configured.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, Trainer

from ..trainers.base import LibraryTrainerMixin, apply_lora, disable_dropout
from ..trainers.inputs import default_config, is_name, load_lm_or_own
from .codi_config import CODIConfig
from .data import CODICollator, CODIDataSettings, answer_value, encode_example, keep_example
from .modeling_codi import CODIForCausalLM, CODILoss

OFFSET_MODEL_TYPES = ("llama", "qwen")  # the released code adds 1 to the distillation position for these names


class CODITrainer(LibraryTrainerMixin, Trainer):
    """Trains a CODI model.

    Args:
        model: a causal LM (or its Hub id / folder), or a `CODIForCausalLM` (or its folder) to continue. A
            plain LM gets the `<|bot|>`/`<|eot|>` tokens (and `[PAD]` where it has no pad) and the projection.
        args: `CODIConfig` (None: its defaults, written to `<model name>-codi`).
        train_dataset / eval_dataset: raw examples, `input`/`cot`/`answer` or GSM8k-Aug's `question`/`cot`/`answer`.
        processing_class: the tokenizer (default: the named model's); it gains the new tokens.
        peft_config: LoRA on the wrapped LM (or `args.use_peft` with the lora_* fields); the projection trains fully.

    Example:
        >>> from icot_hf import CODIConfig, CODITrainer
        >>> CODITrainer(model="gpt2", args=CODIConfig(output_dir="codi", num_train_epochs=40), train_dataset=train).train()
    """

    card_stage = "codi"

    def __init__(self, model=None, args: CODIConfig | None = None, train_dataset=None, eval_dataset=None, processing_class=None,
                 model_init_kwargs: dict | None = None, peft_config=None, callbacks=None, **kwargs):
        if args is None:
            args = default_config(CODIConfig, model, "codi")
        elif not isinstance(args, CODIConfig):
            raise TypeError("CODITrainer expects args=CODIConfig(...) (or None for its defaults)")
        if processing_class is None:
            if not is_name(model):
                raise ValueError("pass processing_class (the tokenizer) when model is a model instance")
            processing_class = AutoTokenizer.from_pretrained(str(model))
        tokenizer = processing_class
        model = self.build_model(model, tokenizer, args, model_init_kwargs)
        if peft_config is not None or args.use_peft:
            model = apply_lora(model, peft_config if peft_config is not None else args.lora_config())
        self.loss_settings = CODILoss(args.distill_loss_type, args.distill_loss_div_std, args.distill_loss_factor, args.ref_loss_factor,
                                      args.fix_attn_mask, args.mask_padding)
        base_type = model.config.get_text_config().model_type
        offset = args.distill_offset if args.distill_offset >= 0 else int(any(t in base_type for t in OFFSET_MODEL_TYPES))
        self.data_settings = CODIDataSettings(args.answer_prefix, args.include_last_cot, args.skip_non_digit_answers, args.remove_eos,
                                              args.max_token_num, args.max_part_tokens, offset)
        prefix_ids = tokenizer.encode(args.answer_prefix, add_special_tokens=False)
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in prefix_ids:
            raise ValueError(f"answer_prefix {args.answer_prefix!r} is not text this tokenizer can write (it gives {prefix_ids}); pick a "
                             f"prefix of known tokens (released: 'The answer is: '; with the digit tokenizer: '#### ')")
        ids = (model.config.bot_id, model.config.eot_id)
        train = self.encode(train_dataset, tokenizer, ids, "train_dataset") if train_dataset is not None else None
        evaluation = self.encode(eval_dataset, tokenizer, ids, "eval_dataset") if eval_dataset is not None else None
        self.eval_examples = eval_dataset
        args.remove_unused_columns = False  # the collator reads every encoded column
        super().__init__(model=model, args=args, data_collator=CODICollator(tokenizer.pad_token_id), train_dataset=train,
                         eval_dataset=evaluation, processing_class=tokenizer, callbacks=callbacks, **kwargs)
        self.model_accepts_loss_kwargs = False  # one mean loss per micro-batch, divided by the accumulation steps
        if args.disable_dropout:
            disable_dropout(self.model)

    def build_model(self, model, tokenizer, args: CODIConfig, init_kwargs) -> CODIForCausalLM:
        model = load_lm_or_own(model, CODIForCausalLM, "CODI", init_kwargs)
        if isinstance(model, CODIForCausalLM):
            model.check_tokenizer(tokenizer)
            return model
        return CODIForCausalLM.from_base(model, tokenizer, num_latent=args.num_latent, use_prj=args.use_prj, prj_dim=args.prj_dim or None,
                                         prj_dropout=args.prj_dropout, prj_no_ln=args.prj_no_ln, remove_eos=args.remove_eos,
                                         answer_prefix=args.answer_prefix)

    def encode(self, dataset, tokenizer, ids: tuple[int, int], name: str):
        """Raw examples -> the three sequences and the distillation positions (cached by `datasets`), after
        the released filters; an error names what is missing or why nothing is left."""
        columns = set(dataset.column_names)
        if not ({"question", "cot", "answer"} <= columns or {"input", "cot", "answer"} <= columns):
            raise ValueError(f"CODITrainer {name}: needs columns input/cot/answer (or question/cot/answer), got {sorted(columns)}")
        if len(dataset) == 0:
            raise ValueError(f"CODITrainer {name} is empty")
        settings = self.data_settings
        kept = dataset.filter(lambda ex: keep_example(ex, tokenizer, settings), desc=f"CODI: filtering {name}")
        if len(kept) == 0:
            raise ValueError(f"CODITrainer {name}: none of its {len(dataset)} examples is kept (answers must start with a digit unless "
                             f"skip_non_digit_answers is off; at most max_token_num={settings.max_token_num} tokens each)")
        bot, eot = ids
        return kept.map(lambda ex: encode_example(ex, tokenizer, bot, eot, settings), remove_columns=list(columns),
                        desc=f"CODI: tokenising {name}")

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The released stack (transformers 4.52) divides every micro-batch's loss by gradient_accumulation_steps,
        # an epoch's last, shorter accumulation included (where today's Trainer divides by the micro-batches it has).
        self.current_gradient_accumulation_steps = self.args.gradient_accumulation_steps
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, loss_settings=self.loss_settings)
        self.record(ce_loss=outputs.ce_loss, distill_loss=outputs.distill_loss, ref_ce_loss=outputs.ref_ce_loss)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """The Trainer's loop plus generation-based exact match in the same metrics (`<prefix>_exact_match`)."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_examples is not None and self.args.eval_exact_match_samples:
            output.metrics[f"{metric_key_prefix}_exact_match"] = self.exact_match(self.eval_examples, self.args.eval_exact_match_samples)
        return output

    @torch.no_grad()
    def exact_match(self, examples, limit: int) -> float:
        """Share of the first `limit` raw examples whose generated answer equals the reference (commas
        dropped; equal as numbers where both are, as the released evaluation compares them)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        rows = examples.select(range(min(limit, len(examples))))
        questions = [r["question"] if "question" in r else r["input"] for r in rows]
        right = 0
        size = self.args.generation_batch_size
        for start in range(0, len(rows), size):
            answers = model.answer(questions[start:start + size], self.processing_class, max_new_tokens=self.args.max_new_tokens)
            for offset, generated in enumerate(answers):
                right += same_answer(generated, answer_value(rows[start + offset]["answer"]))
        model.train(was_training)
        return right / max(len(rows), 1)


def same_answer(generated: str, reference: str) -> bool:
    generated, reference = generated.replace(",", "").strip(), reference.replace(",", "").strip()
    try:
        return float(generated) == float(reference)
    except ValueError:
        return generated == reference
