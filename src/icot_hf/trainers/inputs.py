"""What a TRL user passes to a trainer, turned into what an ICoT stage trains on.

TRL's trainers take a model name or a model, `args=None` (the stage's default config), a
teacher by name, a `peft_config`, and raw datasets they tokenise themselves. Every icot_hf
stage trainer takes the same: these helpers load what was named, wrap a plain causal LM into
the stage's model for the teacher's shape (`ICoTTrainer.build_model`), tokenise `input`/`cot`/
`answer` columns into the views the stage reads, and pick the collator, so

    TeacherTrainer(model="gpt2", train_dataset=raw, processing_class=tokenizer).train()
    MindReadingTrainer(model="gpt2", teacher_model="my-teacher", train_dataset=raw, peft_config=LoraConfig(...))

run as written, while the recipes keep passing everything ready-made.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data import COLUMNS, ICoTCollator, model_context_length, sequence_format_of, tokenize_dataset

TRAINER_ARGUMENT_ORDER = ("model", "args", "data_collator", "train_dataset", "eval_dataset", "processing_class")
METHOD_MODEL_TYPES = {"icot_student", "icot_emulator", "icot", "icot_stepwise", "coconut", "codi"}  # icot_hf's own model types


def load_lm_or_own(model, own_class, method: str, init_kwargs: dict | None):
    """For a method that starts from a causal LM or continues its own model (Coconut, CODI): `model` by name
    (loaded; its own folder as `own_class`) or as an instance. Another icot_hf method's model is refused,
    by name before anything loads."""
    from transformers import AutoConfig, PreTrainedModel

    own_type = own_class.config_class.model_type
    others = METHOD_MODEL_TYPES - {own_type}
    if is_name(model):
        model_type = AutoConfig.from_pretrained(str(model)).model_type
        if model_type in others:
            raise ValueError(f"{model} holds an {model_type} model (another icot_hf method); give {method} a causal LM (trained on "
                             f"explicit CoT) or a {method} folder")
        load = own_class if model_type == own_type else AutoModelForCausalLM
        model = load.from_pretrained(str(model), **(init_kwargs or {}))
    elif init_kwargs:
        raise ValueError("model_init_kwargs apply only when model is a name or path")
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a causal LM or its name, got {type(model).__name__}")
    if getattr(model.config, "model_type", None) in others:
        raise ValueError(f"the model is an {model.config.model_type} model (another icot_hf method), not a causal LM for {method}")
    return model


def named_arguments(positional: tuple, kwargs: dict) -> dict:
    """`Trainer(model, args, data_collator, ...)` positional arguments as keywords."""
    if len(positional) > len(TRAINER_ARGUMENT_ORDER):
        raise TypeError(f"at most {len(TRAINER_ARGUMENT_ORDER)} positional arguments ({', '.join(TRAINER_ARGUMENT_ORDER)}); pass the rest by name")
    for name, value in zip(TRAINER_ARGUMENT_ORDER, positional):
        if name in kwargs:
            raise TypeError(f"{name} given both by position and by name")
        kwargs[name] = value
    return kwargs


def is_name(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def saved_model_type(name_or_path) -> str | None:
    """The model_type a folder or Hub id was saved with (None where it has no config)."""
    from transformers import PretrainedConfig

    try:
        return PretrainedConfig.get_config_dict(str(name_or_path))[0].get("model_type")
    except OSError:
        return None


def load_causal_lm(name_or_model, init_kwargs: dict | None, what: str):
    """A causal LM from a Hub id or folder (with `<what>_init_kwargs`), or the model given."""
    if is_name(name_or_model):
        return AutoModelForCausalLM.from_pretrained(str(name_or_model), **(init_kwargs or {}))
    if init_kwargs:
        raise ValueError(f"{what}_init_kwargs apply only when {what} is a name or path, not a model instance")
    return name_or_model


def default_config(config_class, model, stage: str):
    """The stage's config with its defaults, written to `<model name>-<stage>` as TRL does."""
    name = Path(str(model)).name if is_name(model) else "icot"
    return config_class(output_dir=f"{name}-{stage}")


def resolve_tokenizer(processing_class, *names):
    """The tokenizer given, else the one saved with the first named model or teacher."""
    if processing_class is not None:
        return processing_class
    for name in names:
        if is_name(name):
            return AutoTokenizer.from_pretrained(str(name))
    return None


def stage_dataset(dataset, tokenizer, views, model, context_model, name: str, step_ends: bool = False):
    """`dataset` as the stage reads it: already-tokenised data passes through as it is; raw `input`,
    `cot`, `answer` columns are tokenised (cached by `datasets`) in the model's sequence format,
    checked against `context_model`'s context (the teacher's, where it reads the explicit view)."""
    if dataset is None:
        return None
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        raise TypeError(f"{name}: pass one split (dataset['train']), not a DatasetDict with {list(dataset)}")
    columns = set(dataset.column_names)
    if any(column.endswith("_input_ids") for column in columns):  # tokenised already, in the views its maker chose
        return dataset
    if not set(COLUMNS) <= columns:
        raise ValueError(f"{name} has columns {sorted(columns)}: give raw examples (columns {', '.join(COLUMNS)}) or the tokenised "
                         f"views {', '.join(views)} (icot_hf.data.tokenize_dataset)")
    if tokenizer is None:
        raise ValueError(f"{name} holds raw text: pass processing_class=<the tokenizer> to tokenise it")
    config = getattr(model, "config", None)
    return tokenize_dataset(dataset, tokenizer, views=views, max_length=context_length(context_model), split_name=name,
                            sequence_format=sequence_format_of(model) if config is not None else "compact", step_ends=step_ends)


def context_length(model) -> int | None:
    """The context of a causal LM, or of the LM inside a student, emulator or coupled model."""
    inner = getattr(model, "student", model)
    config = getattr(inner, "config", None)
    if config is None:
        return None
    base = getattr(config, "base_config", None)
    return model_context_length(base if base is not None else config)


def default_collator(tokenizer, views):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ICoTCollator(pad, views=views)
