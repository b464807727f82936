"""`CoconutTrainer`: Coconut's curriculum on a `transformers.Trainer`.

What the released run.py does between steps, and where it lives here:
- the dataset is rebuilt at every epoch for that epoch's stage: `CurriculumDataset.set_curriculum_epoch`,
  called by `CurriculumCallback.on_epoch_begin` before the epoch's first batch is read (so the
  dataloader must read items in the main process: `dataloader_num_workers=0`);
- the optimizer is re-created at every epoch (`reset_optimizer: True`): the callback clears the
  AdamW state (moments and step counts), which is what a new torch AdamW starts from; a run
  resumed mid-epoch keeps the state its checkpoint saved;
- one mean cross-entropy per micro-batch, divided by the accumulation steps; AdamW over every
  parameter; constant lr; no clipping (CoconutConfig's defaults).
"""

from __future__ import annotations

import math

import torch
from transformers import AutoTokenizer, Trainer, TrainerCallback

from ..trainers.base import LibraryTrainerMixin, apply_lora, disable_dropout
from ..trainers.inputs import default_config, is_name, load_lm_or_own
from .coconut_config import CoconutConfig
from .configuration_coconut import END_LATENT, LATENT, START_LATENT
from .data import CoconutCollator, CoconutFormat, CurriculumDataset, CurriculumSettings, question_prompt, tokenize_example
from .modeling_coconut import CoconutForCausalLM



class CurriculumCallback(TrainerCallback):
    """Sets the epoch's stage on the dataset and the model, and resets the optimizer as configured."""

    def __init__(self, trainer: "CoconutTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        epoch = math.floor(state.epoch + 1e-6) if state.epoch else 0
        dataset = trainer.train_dataset
        previous_stage = dataset.stage_of(epoch - 1) if epoch > 0 else None
        dataset.set_curriculum_epoch(epoch)
        trainer.accelerator.unwrap_model(trainer.model).config.num_latent_thoughts = trainer.prompt_latents(dataset.stage)
        steps_per_epoch = state.max_steps / args.num_train_epochs if args.max_steps <= 0 else None
        at_epoch_start = steps_per_epoch is None or state.global_step == round(epoch * steps_per_epoch)
        reset = {"epoch": True, "stage": dataset.stage != previous_stage, "never": False}[args.reset_optimizer]
        if epoch > 0 and at_epoch_start and reset and trainer.optimizer is not None:
            inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
            inner.state.clear()  # a fresh AdamW: no moments, step counts from zero
            trainer.optimizer_resets.append(epoch)


class CoconutTrainer(LibraryTrainerMixin, Trainer):
    """Trains a Coconut model through its curriculum.

    Args:
        model: a causal LM (or its Hub id / folder) trained on explicit CoT, or a `CoconutForCausalLM`
            (or its folder) to continue. A plain LM gets the three tokens and is wrapped.
        args: `CoconutConfig` (None: its defaults, written to `<model name>-coconut`).
        train_dataset / eval_dataset: raw examples, `input`/`cot`/`answer` (the CoT is cut into steps by
            `icot_hf.coconut.data.split_steps`) or Coconut's `question`/`steps`/`answer`.
        processing_class: the tokenizer (default: the named model's); it gains the latent tokens.

    Example:
        >>> from icot_hf import CoconutConfig, CoconutTrainer
        >>> args = CoconutConfig(output_dir="coconut", c_thought=2, epochs_per_stage=3, max_latent_stage=3, num_train_epochs=25)
        >>> CoconutTrainer(model="gsm8k-cot", args=args, train_dataset=train, eval_dataset=valid).train()
    """

    card_stage = "coconut"

    def __init__(self, model=None, args: CoconutConfig | None = None, train_dataset=None, eval_dataset=None, processing_class=None,
                 model_init_kwargs: dict | None = None, peft_config=None, callbacks=None, **kwargs):
        if args is None:
            args = default_config(CoconutConfig, model, "coconut")
        elif not isinstance(args, CoconutConfig):
            raise TypeError("CoconutTrainer expects args=CoconutConfig(...) (or None for its defaults)")
        if args.dataloader_num_workers:
            raise ValueError("CoconutTrainer rebuilds its dataset at each epoch in the main process: set dataloader_num_workers=0")
        if processing_class is None:
            if not is_name(model):
                raise ValueError("pass processing_class (the tokenizer) when model is a model instance")
            processing_class = AutoTokenizer.from_pretrained(str(model))
        tokenizer = processing_class
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # as the released run.py
        self.settings = CurriculumSettings(c_thought=args.c_thought, max_latent_stage=args.max_latent_stage,
                                           pad_latent_to_max=args.pad_latent_to_max, uniform_prob=args.uniform_prob)
        self.text_format = CoconutFormat(args.question_suffix, args.step_suffix, args.answer_prefix)
        model = self.build_model(model, tokenizer, args, model_init_kwargs)
        if peft_config is not None or args.use_peft:  # LoRA on the wrapped LM, the new token rows trained (CoconutForCausalLM.add_lora)
            model = apply_lora(model, peft_config if peft_config is not None else args.lora_config())
        self.ids = {"latent": model.config.latent_token_id, "start": model.config.start_latent_id, "end": model.config.end_latent_id}
        examples = self.tokenize(train_dataset, tokenizer, "train_dataset") if train_dataset is not None else None
        self.eval_examples = self.tokenize(eval_dataset, tokenizer, "eval_dataset") if eval_dataset is not None else None
        train = None
        if examples is not None:
            train = CurriculumDataset(examples, self.settings, self.ids, args.epochs_per_stage, args.start_epoch, args.seed)
        evaluation = None
        if self.eval_examples is not None:  # the eval loss at the stage the run starts in (the released valid loss)
            evaluation = CurriculumDataset(self.eval_examples, CurriculumSettings(**{**vars(self.settings), "uniform_prob": 0.0}), self.ids,
                                           args.epochs_per_stage, args.start_epoch, args.seed)
        self.optimizer_resets: list[int] = []
        super().__init__(model=model, args=args, data_collator=CoconutCollator(tokenizer.pad_token_id, self.ids["latent"]),
                         train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer, callbacks=callbacks, **kwargs)
        self.add_callback(CurriculumCallback(self))
        self.model_accepts_loss_kwargs = False  # one mean loss per micro-batch, divided by the accumulation steps
        if args.disable_dropout:
            disable_dropout(self.model)

    def build_model(self, model, tokenizer, args: CoconutConfig, init_kwargs) -> CoconutForCausalLM:
        model = load_lm_or_own(model, CoconutForCausalLM, "Coconut", init_kwargs)
        if isinstance(model, CoconutForCausalLM):
            model.check_tokenizer(tokenizer)
        else:
            model = self.wrap(model, tokenizer, args)
        model.config.c_thought = args.c_thought
        model.config.question_suffix, model.config.step_suffix, model.config.answer_prefix = (args.question_suffix, args.step_suffix,
                                                                                              args.answer_prefix)
        return model

    def wrap(self, model, tokenizer, args: CoconutConfig) -> CoconutForCausalLM:
        """A plain causal LM with the three tokens added (checked against the tokenizer)."""
        present = {t: tokenizer.convert_tokens_to_ids(t) for t in (START_LATENT, END_LATENT, LATENT) if t in tokenizer.get_vocab()}
        if present and any(i >= model.get_input_embeddings().weight.shape[0] for i in present.values()):
            raise ValueError(f"the tokenizer already holds {present} but the model has {model.get_input_embeddings().weight.shape[0]} "
                             f"embeddings: give the tokenizer the model was trained with")
        return CoconutForCausalLM.from_base(model, tokenizer, num_latent_thoughts=0, c_thought=args.c_thought,
                                            init_token=args.latent_init_token)

    def tokenize(self, dataset, tokenizer, name: str):
        """Raw examples -> question/step/answer ids (cached by `datasets`), with the checks a curriculum needs."""
        columns = set(dataset.column_names)
        if not ({"question", "steps", "answer"} <= columns or {"input", "cot", "answer"} <= columns):
            raise ValueError(f"CoconutTrainer {name}: needs columns input/cot/answer or question/steps/answer, got {sorted(columns)}")
        if len(dataset) == 0:
            raise ValueError(f"CoconutTrainer {name} is empty")
        text_format = self.text_format
        tokenized = dataset.map(lambda ex: tokenize_example(ex, tokenizer, text_format), remove_columns=list(columns),
                                desc=f"Coconut: tokenising {name}")
        if self.settings.max_latent_stage > 0:
            empty = [i for i, steps in enumerate(tokenized["step_ids"]) if len(steps) == 0]
            if empty:
                i = empty[0]
                text = dataset[i].get("cot", dataset[i].get("steps"))
                raise ValueError(f"CoconutTrainer {name}: {len(empty)} example(s) have no reasoning steps for the latent stages to replace "
                                 f"(first: row {i}, CoT {text!r}); remove them or give their steps")
        return tokenized

    def prompt_latents(self, stage: int) -> int:
        """Latents an evaluation prompt carries at `stage` (for the largest problem when not padded)."""
        return min(stage, self.settings.max_latent_stage) * self.settings.c_thought

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.eval_dataset is not None and self.train_dataset is not None:
            self.eval_dataset.set_curriculum_epoch(self.train_dataset.epoch)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """The Trainer's loop plus generation-based exact match in the same metrics, so the log,
        `on_evaluate` callbacks and early stopping see `<prefix>_exact_match`."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_examples is not None and self.args.eval_exact_match_samples:
            stage = self.train_dataset.stage if self.train_dataset is not None else self.args.start_epoch // self.args.epochs_per_stage
            output.metrics[f"{metric_key_prefix}_exact_match"] = self.exact_match(self.eval_examples, stage,
                                                                                  self.args.eval_exact_match_samples)
        return output

    @torch.no_grad()
    def exact_match(self, examples, stage: int, limit: int) -> float:
        """Share of the first `limit` examples whose generated answer (the text after the last '#',
        commas dropped, as the released evaluation reads it) equals the reference answer."""
        model = self.accelerator.unwrap_model(self.model)
        tokenizer = self.processing_class
        was_training = model.training
        model.eval()
        rows = examples.select(range(min(limit, len(examples))))
        right = 0
        size = self.args.generation_batch_size
        for start in range(0, len(rows), size):
            chunk = [rows[i] for i in range(start, min(start + size, len(rows)))]
            prompts = [question_prompt(ex, stage, self.settings, self.ids) for ex in chunk]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=self.args.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.args.device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.args.max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for ex, generated in zip(chunk, out[:, width:].tolist()):
                text = tokenizer.decode(generated, skip_special_tokens=True)
                answer = tokenizer.decode(ex["answer_ids"], skip_special_tokens=True)
                right += answer_of(text) == answer_of(answer)
        model.train(was_training)
        return right / max(len(rows), 1)


def answer_of(text: str) -> str:
    """The answer as the released evaluation reads it: after the last '#', commas dropped."""
    return text.split("#")[-1].replace(",", "").strip()
