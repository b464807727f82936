"""What every ICoT stage trainer shares.

- Frozen models (the teacher; the emulator when fixed) are held by the trainer, in eval
  mode with gradients off, and placed through accelerate: moved to the device, or under
  DeepSpeed wrapped as an inference-only engine (sharded under ZeRO-3), like TRL's
  `prepare_deepspeed`. They are never part of the saved checkpoint.
- Stage metrics (token accuracy, per-layer MSE, ...) are accumulated per step and logged
  with the Trainer's own loss, averaged over the logging window.
- Optional generation-based exact match on the eval set at each evaluation.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

logger = logging.getLogger(__name__)


def disable_dropout(model: nn.Module) -> None:
    """Zero all dropout: the paper's code trains the student, the emulator and the coupled model in
    eval mode (its teacher and ICoT-SI train with GPT-2's dropout on: the paper presets set
    disable_dropout: false there)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def prepare_frozen_model(model: nn.Module, accelerator) -> nn.Module:
    """Freeze `model` and place it for inference next to the trained one."""
    model.eval()
    model.requires_grad_(False)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return model.to(accelerator.device)
    import deepspeed

    config = copy.deepcopy(plugin.deepspeed_config)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is not None:
            config["zero_optimization"].update(
                {
                    "reduce_bucket_size": hidden * hidden,
                    "stage3_param_persistence_threshold": 10 * hidden,
                    "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                }
            )
    else:
        # ZeRO-1/2 shard optimizer state only; a frozen model has none, so run it plainly.
        config["zero_optimization"] = {"stage": 0}
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if config.get(key) == "auto":
            config[key] = 1
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    logger.info("frozen %s prepared as a DeepSpeed ZeRO-%d inference engine", type(model).__name__, config["zero_optimization"]["stage"])
    return engine


def apply_lora(model: nn.Module, lora_config) -> nn.Module:
    """LoRA on the base causal LM(s): a plain LM is wrapped by peft; the student and emulator
    adapt their `lm` and keep their own modules fully trainable; the composite adapts both."""
    if hasattr(model, "emulator") and hasattr(model, "student"):
        if not model.emulator.has_lora:
            model.emulator.add_lora(copy.deepcopy(lora_config))
        if not model.student.has_lora:
            model.student.add_lora(copy.deepcopy(lora_config))
        return model
    if hasattr(model, "add_lora"):
        return model if model.has_lora else model.add_lora(lora_config)
    if hasattr(model, "peft_config"):
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config)


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token accuracy over labelled positions (labels are unshifted, like HF's)."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    return (predicted[mask] == target[mask]).float().mean() if mask.any() else logits.new_zeros(())


class FrozenTeacherMixin:
    """For stages that read a frozen teacher: load it (a name, with `teacher_model_init_kwargs`,
    or a model), check its shape against the trained model's config, hold it prepared for
    inference, and extract its states for a batch."""

    def take_teacher(self, teacher_model, teacher, init_kwargs: dict | None) -> None:
        """Before ICoTTrainer.__init__: the teacher (`teacher_model`, TRL's name, or `teacher`),
        loaded, so the trained model can be built for its shape and data checked against it."""
        from .inputs import is_name, load_causal_lm

        given = teacher_model if teacher_model is not None else teacher
        if given is None:
            raise ValueError(f"{type(self).__name__} needs teacher_model=<a trained explicit-CoT causal LM, or its name or folder>")
        self._teacher_name = given if is_name(given) else None
        self.frozen_teacher = load_causal_lm(given, init_kwargs, "teacher_model")

    def teacher_shape(self) -> dict:
        """Config arguments that size a student or emulator for the teacher's states."""
        config = self.frozen_teacher.config
        return dict(teacher_num_layers=config.num_hidden_layers, teacher_hidden_size=config.hidden_size)

    def attach_teacher(self, teacher, what: str) -> None:
        config = self.accelerator.unwrap_model(self.model).config
        shape = (teacher.config.num_hidden_layers, teacher.config.hidden_size)
        if shape != (config.teacher_num_layers, config.teacher_hidden_size):
            raise ValueError(
                f"the teacher has {shape[0]} layers of width {shape[1]} but the {what} was configured for "
                f"{config.teacher_num_layers} x {config.teacher_hidden_size}; build the {what} with teacher_num_layers/"
                "teacher_hidden_size (and teacher_layers) matching the teacher"
            )
        self.teacher = prepare_frozen_model(teacher, self.accelerator)

    def teacher_states(self, inputs):
        if "teacher_states" in inputs:  # extracted once by the teacher-state cache
            return inputs["teacher_states"]
        from ..kd.teacher_states import extract_teacher_states

        return extract_teacher_states(
            self.teacher,
            inputs["explicit_input_ids"],
            inputs["explicit_attention_mask"],
            inputs["explicit_separators"],
            delta=self.args.delta,
            pattern=self.args.subset,
        )


class LibraryTrainerMixin:
    """What every icot_hf trainer shares: the released code's AdamW parameter groups, and one
    publishing path for cards and pushes (`icot_hf.hub.push_folder`)."""

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """With `weight_decay_all_parameters`, every parameter decays (the released code's
        `torch.optim.AdamW(all parameters)`); otherwise the Trainer's groups (no decay on biases
        and norm weights)."""
        if getattr(self.args, "weight_decay_all_parameters", False):
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    @property
    def stage_metrics(self) -> dict[str, defaultdict]:
        if "_stage_metrics" not in self.__dict__:
            self._stage_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        return self._stage_metrics

    def record(self, **metrics: torch.Tensor | float) -> None:
        """Values to average into the next log line (a loss's parts, accuracies), per mode."""
        mode = "train" if self.model.training else "eval"
        for name, value in metrics.items():
            self.stage_metrics[mode][name].append(float(value.detach().float().mean()) if torch.is_tensor(value) else float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self.stage_metrics[mode].items():
            if values:
                logs[prefix + name] = sum(values) / len(values)
        self.stage_metrics[mode].clear()
        super().log(logs, start_time)

    def _run_epoch(self, *args, **kwargs):
        """No step past the end. Resumed from a checkpoint saved at the run's last step (a run
        killed between that checkpoint and its final save), transformers' loop would train one
        more batch before it checks `max_steps` (it checks after each step): measured, a killed
        Coconut run's re-run ended at step 3 of 2 with other weights than the uninterrupted run's.
        Here an epoch that starts with the steps all done is not run."""
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    card_stage = "teacher"  # the model card's stage (icot_hf.hub.STAGES)

    def model_card(self, task: str | None = None, dataset: str | None = None) -> str:
        """This run's model card: stage, base model, dataset, training settings, the last
        evaluation's metrics, the papers' citations (icot_hf.hub's template)."""
        from ..hub import render_model_card

        model = self.accelerator.unwrap_model(self.model)
        inner = getattr(model, "student", model)
        base = getattr(getattr(inner, "lm", inner), "config", None)
        evaluations = [entry for entry in self.state.log_history if any(k.startswith("eval_") for k in entry)]
        metrics = {k: v for k, v in evaluations[-1].items() if k.startswith("eval_")} if evaluations else None
        summary = (f"{type(self).__name__}, {self.state.global_step} steps, batch {self.args.per_device_train_batch_size} per device, "
                   f"lr {self.args.learning_rate:g}")
        return render_model_card(self.card_stage, self.args.hub_model_id or Path(self.args.output_dir).name, task or "custom task",
                                 base_model=getattr(base, "_name_or_path", None) or None, dataset=dataset, training_summary=summary,
                                 metrics=metrics)

    def create_model_card(self, model_name=None, language=None, license=None, tags=None, finetuned_from=None, tasks=None,
                          dataset_name=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs):
        """The Trainer's card hook, rendering icot_hf's card (the generic one knows nothing of the method)."""
        if self.is_world_process_zero():
            (Path(self.args.output_dir) / "README.md").write_text(self.model_card(dataset_name, dataset_name), encoding="utf-8")

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, **kwargs):
        """Push the saved model through the same path as `recipes/push.py` (`icot_hf.hub.push_folder`):
        the card uploaded from memory; never `training_args.bin` (it can hold a token), checkpoints or
        run bookkeeping; a network failure is one line (`HubUnavailableError`)."""
        from ..hub import push_folder

        if not self.is_world_process_zero():
            return None
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).name
        card = self.model_card(kwargs.get("dataset_name"), kwargs.get("dataset_name"))
        return push_folder(self.args.output_dir, repo_id, card=card)

    def _push_from_checkpoint(self, checkpoint_folder):
        """No checkpoint uploads: what goes to the Hub is the finished model (`push_to_hub`)."""

    def init_hf_repo(self, token: str | None = None):
        """The repository is created when the model is pushed (`push_to_hub`), not at start."""


class ICoTTrainer(LibraryTrainerMixin, Trainer):
    """Trainer with per-stage metric logging and loss-only prediction steps, taking what TRL's
    trainers take (see `inputs.py`): a model or its name, `args=None` for the stage's defaults,
    raw or tokenised datasets, `processing_class`, `peft_config`."""

    config_class: type | None = None  # the stage's TrainingArguments subclass
    stage_name = "icot"  # names the default output_dir, `<model name>-<stage>`
    frozen_teacher = None  # set by FrozenTeacherMixin trainers before this __init__ runs

    def __init__(self, *args, model_init_kwargs: dict | None = None, peft_config=None, separator_id: int | None = None, **kwargs):
        from ..tokenization import separator_token_id
        from .inputs import default_collator, default_config, named_arguments, resolve_tokenizer, stage_dataset

        kwargs = named_arguments(args, kwargs)
        name = type(self).__name__
        model = kwargs.get("model")
        if kwargs.get("args") is None:
            kwargs["args"] = default_config(self.config_class, model, self.stage_name)
        elif self.config_class is not None and not isinstance(kwargs["args"], self.config_class):
            raise TypeError(f"{name} expects args={self.config_class.__name__}(...) (or None for its defaults)")
        training_args = kwargs["args"]
        tokenizer = kwargs["processing_class"] = resolve_tokenizer(kwargs.get("processing_class"), model, getattr(self, "_teacher_name", None))
        self._tokenizer_for_build = tokenizer
        if model is not None:
            model = kwargs["model"] = self.build_model(model, model_init_kwargs, training_args)
        self.separator_id = separator_id if separator_id is not None or tokenizer is None else separator_token_id(tokenizer)
        views = self.views(training_args)
        context_model = self.frozen_teacher if self.frozen_teacher is not None else model
        for split in ("train_dataset", "eval_dataset"):
            kwargs[split] = stage_dataset(kwargs.get(split), tokenizer, views, model, context_model, f"{name} {split}",
                                          step_ends=self.reads_step_ends(training_args))
        if kwargs.get("data_collator") is None and tokenizer is not None:
            kwargs["data_collator"] = default_collator(tokenizer, views)
        if peft_config is not None and model is not None:
            kwargs["model"] = apply_lora(model, peft_config)
        elif getattr(training_args, "use_peft", False) and model is not None:
            kwargs["model"] = apply_lora(model, training_args.lora_config())
        super().__init__(**kwargs)
        if getattr(self.args, "disable_dropout", False):
            disable_dropout(self.model)

    def build_model(self, model, init_kwargs: dict | None, training_args):
        """The model this stage trains, from a name or a model: by default a causal LM as given
        (the teacher, ICoT-SI); the distillation stages wrap a plain LM for the teacher's shape."""
        from .inputs import load_causal_lm

        return load_causal_lm(model, init_kwargs, "model")

    def views(self, training_args) -> tuple[str, ...]:
        """The tokenised views this stage reads (data.build_views)."""
        return ("explicit", "implicit")

    def reads_step_ends(self, training_args) -> bool:
        """Whether this stage reads each example's CoT step boundaries (data.build_views' step_ends)."""
        return False

    def causal_lm_loss(self, model, labels: torch.Tensor, **forward_kwargs):
        """(loss, outputs) of `model(**forward_kwargs)` against `labels`, recording token accuracy.
        With `label_logits_only` (the default) the output layer runs on labelled positions only
        (outputs is then None); where that does not apply, the model's own loss."""
        if getattr(self.args, "label_logits_only", False) and not getattr(self, "_keep_logits", False):
            from ..label_loss import label_position_loss

            result = label_position_loss(model, labels, compute_dtype=self.output_layer_dtype(model), **forward_kwargs)
            if result is not None:
                loss, accuracy = result
                self.record(token_accuracy=accuracy)
                return loss, None
        outputs = model(labels=labels, **forward_kwargs)
        self.record(token_accuracy=token_accuracy(outputs.logits.detach(), labels))
        if getattr(self, "_keep_logits", False):  # for prediction_step: what compute_metrics scores
            self._kept = (outputs.logits, labels)
        return outputs.loss, outputs

    def output_layer_dtype(self, model):
        """The dtype of the label-position loss's output layer (icot_hf.precision.output_layer_dtype),
        decided once per run from the precision and the head's vocabulary."""
        if "_output_layer_dtype" not in self.__dict__:
            from ..label_loss import causal_lm_inside
            from ..precision import output_layer_dtype

            head = causal_lm_inside(model).get_output_embeddings()
            vocab = getattr(head, "out_features", 0) if head is not None else 0
            self._output_layer_dtype = output_layer_dtype(self.args, vocab)
        return self._output_layer_dtype

    # ---------------------------------------------------------------- exact match on eval

    def answer_batch(self, model, batch: dict[str, torch.Tensor]) -> list[list[int]]:
        """Token ids of the answers `model` generates for a collated eval batch (per stage)."""
        raise NotImplementedError

    def exact_match(self, dataset, limit: int) -> float:
        """Generate answers for the first `limit` eval examples and score them."""
        from ..data import answer_from_generation
        from ..evaluation import load_exact_match

        subset = dataset.select(range(min(limit, len(dataset))))
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        predictions = []
        size = self.args.generation_batch_size
        for start in range(0, len(subset), size):
            rows = [subset[i] for i in range(start, min(start + size, len(subset)))]
            batch = {k: v.to(self.args.device) for k, v in self.data_collator(rows).items()}
            answers = self.answer_batch(model, batch)
            predictions.extend(answer_from_generation(self.processing_class.decode(a, skip_special_tokens=True)) for a in answers)
        model.train(was_training)
        references = [subset[i]["answer"] for i in range(len(subset))]
        return load_exact_match().compute(predictions=predictions, references=references)["exact_match"]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._evaluated_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """The Trainer's loop (loss, and a user's `compute_metrics` on logits and labels), plus
        generation-based exact match in the same metrics, so the log, `on_evaluate` callbacks
        and early stopping all see `<prefix>_exact_match`."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        dataset = getattr(self, "_evaluated_dataset", None)
        if self.args.eval_exact_match_samples and dataset is not None and self.processing_class is not None:
            if "answer" not in dataset.column_names:
                raise ValueError("exact-match evaluation needs the 'answer' column in the eval dataset")
            output.metrics[f"{metric_key_prefix}_exact_match"] = self.exact_match(dataset, self.args.eval_exact_match_samples)
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only, unless a `compute_metrics` wants predictions: then the stage's logits and
        the labels they are scored against (stages without token outputs, the emulator, give none)."""
        inputs = self._prepare_inputs(inputs)
        wants_logits = self.compute_metrics is not None and not prediction_loss_only
        self._keep_logits, self._kept = wants_logits, None
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
        finally:
            self._keep_logits = False
        if wants_logits and self._kept is not None:
            logits, labels = self._kept
            return loss.detach(), logits.detach(), labels.detach()
        return loss.detach(), None, None
