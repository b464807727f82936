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
    """For stages that read a frozen teacher: check its shape against the trained model's
    config, hold it prepared for inference, and extract its states for a batch."""

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
        from ..teacher import extract_teacher_states

        return extract_teacher_states(
            self.teacher,
            inputs["explicit_input_ids"],
            inputs["explicit_attention_mask"],
            inputs["explicit_separators"],
            delta=self.args.delta,
            pattern=self.args.subset,
        )


class ICoTTrainer(Trainer):
    """Trainer with per-stage metric logging and loss-only prediction steps."""

    def __init__(self, *args, **kwargs):
        args_ = kwargs.get("args")
        if args_ is not None and getattr(args_, "use_peft", False) and kwargs.get("model") is not None:
            kwargs["model"] = apply_lora(kwargs["model"], args_.lora_config())
        super().__init__(*args, **kwargs)
        self._stage_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        if getattr(self.args, "disable_dropout", False):
            disable_dropout(self.model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """With `weight_decay_all_parameters`, every parameter decays (the released code's
        `torch.optim.AdamW(all parameters)`); otherwise the Trainer's groups (no decay on biases
        and norm weights)."""
        if getattr(self.args, "weight_decay_all_parameters", False):
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def causal_lm_loss(self, model, labels: torch.Tensor, **forward_kwargs):
        """(loss, outputs) of `model(**forward_kwargs)` against `labels`, recording token accuracy.
        With `label_logits_only` (the default) the output layer runs on labelled positions only
        (outputs is then None); where that does not apply, the model's own loss."""
        if getattr(self.args, "label_logits_only", False):
            from ..label_loss import label_position_loss

            result = label_position_loss(model, labels, **forward_kwargs)
            if result is not None:
                loss, accuracy = result
                self.record(token_accuracy=accuracy)
                return loss, None
        outputs = model(labels=labels, **forward_kwargs)
        self.record(token_accuracy=token_accuracy(outputs.logits.detach(), labels))
        return outputs.loss, outputs

    def record(self, **metrics: torch.Tensor | float) -> None:
        mode = "train" if self.model.training else "eval"
        for name, value in metrics.items():
            self._stage_metrics[mode][name].append(float(value.detach().float().mean()) if torch.is_tensor(value) else float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._stage_metrics[mode].items():
            if values:
                logs[prefix + name] = sum(values) / len(values)
        self._stage_metrics[mode].clear()
        super().log(logs, start_time)

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
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if self.args.eval_exact_match_samples and dataset is not None and self.processing_class is not None:
            if "answer" not in dataset.column_names:
                raise ValueError("exact-match evaluation needs the 'answer' column in the eval dataset")
            score = self.exact_match(dataset, self.args.eval_exact_match_samples)
            metrics[f"{metric_key_prefix}_exact_match"] = score
            self.log({f"{metric_key_prefix}_exact_match": score})
        return metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
