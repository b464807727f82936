"""Shared plumbing of the `recipes/` entry points: arguments from YAML and the command line,
tokenizer, base model and tokenised data.

Every recipe parses `(ScriptArguments, <Stage>Config)` with `HfArgumentParser`. Values
come from `--config file.yaml` and are overridden by any `--field value` on the command
line, so `accelerate launch recipes/teacher.py --config X.yaml --num_train_epochs 2` works.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, PretrainedConfig, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .curves import write_learning_curve
from .data import SEQUENCE_FORMATS, load_icot_dataset, tokenize_dataset, without_empty_cot
from .precision import precision_of
from .progress import ProgressFile
from .run_record import CHECKPOINTS_FILE, read_json, record_checkpoint, start_run, written_by_this_run
from .run_record import begin_run as begin_run_record
from .run_record import finish_run  # noqa: F401
from .tokenization import build_digit_tokenizer, separator_token_id
from .trainers.inputs import context_length as context_length_of  # noqa: F401 (the recipes' name)
from .trainers.inputs import default_collator as collator_for  # noqa: F401

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    """Data, tokenizer and model sources (everything that is not a training hyperparameter)."""

    dataset_name_or_path: str = field(default="data/4x4_mult", metadata={"help": "Saved DatasetDict folder, ICoT text file, or Hub dataset id."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str | None = field(default="valid", metadata={"help": "Evaluation split name (None: no evaluation)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation examples."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; default: the model's, else icot_hf's digit tokenizer."}
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "Pretrained base causal LM (Hub id or local path)."})
    model_config: str | None = field(
        default=None,
        metadata={"help": "JSON (or YAML mapping) of a config to train from scratch, e.g. {model_type: gpt2, n_layer: 8, n_embd: 128, n_head: 4}."},
    )
    teacher_name_or_path: str | None = field(default=None, metadata={"help": "Trained explicit-CoT teacher (distillation stages)."})
    student_name_or_path: str | None = field(default=None, metadata={"help": "Trained mind-reading student (coupled stage)."})
    emulator_name_or_path: str | None = field(default=None, metadata={"help": "Trained thought emulator (coupled stage)."})
    init_from_teacher: bool = field(
        default=False,
        metadata={"help": "Start the student's/emulator's base LM from the teacher's weights instead of model_name_or_path/model_config."},
    )
    separator_token: str | None = field(default=None, metadata={"help": "Token used as the separator S (default: eos)."})
    on_overflow: str = field(default="error", metadata={"help": "Sequences over the model's context: 'error' or 'drop'."})
    sequence_format: str = field(
        default="compact",
        metadata={"help": "'compact' (each part tokenised alone, S by id: icot_hf's default) or 'reference' (the paper's code's "
                  "strings: spaces before each S, '#### ' before the answer, commas removed; the paper presets use it). "
                  "Recorded in the trained model's config (icot_sequence_format) so evaluation prompts it the same way."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start a fresh run in output_dir, replacing the files an earlier run of ours wrote there."}
    )
    rerun_if_changed: bool = field(
        default=False,
        metadata={"help": "If output_dir holds a run with other settings or upstream models, start a fresh run instead of "
                  "stopping (a finished run with the same ones is still a no-op). `make reproduce` sets it."},
    )

    def __post_init__(self):
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for the whole split), got {value}")
        if self.on_overflow not in ("error", "drop"):
            raise ValueError(f"on_overflow must be 'error' or 'drop', got {self.on_overflow!r}")
        if self.sequence_format not in SEQUENCE_FORMATS:
            raise ValueError(f"sequence_format must be one of {SEQUENCE_FORMATS}, got {self.sequence_format!r}")


def parse_args(*config_classes, argv: list[str] | None = None):
    """Parse dataclasses from `--config YAML` plus command-line overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(config_classes)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file path")
        path = argv[index + 1]
        del argv[index : index + 2]
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown field(s) {unknown}; see --help for the fields of this recipe")
        for key, value in list(values.items()):
            if isinstance(value, (dict, list)) and key == "model_config":
                values[key] = json.dumps(value)
            elif isinstance(value, list) and key in ("lora_target_modules", "teacher_layers"):
                values[key] = ",".join(str(v) for v in value)  # [q_proj, v_proj] -> "q_proj,v_proj"
            elif isinstance(value, bool) and key.endswith("_strategy"):
                if value:
                    raise SystemExit(f"{path}: {key}: {value} is not a strategy; write one of \"no\", \"steps\", \"epoch\" (quoted)")
                values[key] = "no"  # YAML reads an unquoted `no` as false
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def load_tokenizer(script_args: ScriptArguments, fallback_path: str | None = None):
    source = script_args.tokenizer_name_or_path or script_args.model_name_or_path or fallback_path
    if source is None:
        return build_digit_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_config_fields(model_type: str, values: dict) -> None:
    """A misspelt `model_config` key would be kept as a stray attribute while the model silently
    takes the default (GPT-2's 12 x 768 for `n_layers`): stop and name it instead."""
    import difflib

    defaults = AutoConfig.for_model(model_type)
    known = set(defaults.to_dict()) | set(getattr(defaults, "attribute_map", {}))
    for key in values:
        if key not in known and not hasattr(defaults, key):
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"model_config: {key!r} is not a field of {type(defaults).__name__} ({model_type}){hint}")


def build_base_model(script_args: ScriptArguments, tokenizer):
    """A pretrained causal LM, or one built from `model_config` with the tokenizer's ids."""
    if script_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    if not script_args.model_config:
        raise ValueError("give model_name_or_path (a pretrained model) or model_config (a config to train from scratch)")
    values = yaml.safe_load(script_args.model_config) if isinstance(script_args.model_config, str) else dict(script_args.model_config)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError("model_config needs a model_type (e.g. gpt2, llama)")
    check_config_fields(model_type, values)
    separator = separator_token_id(tokenizer, script_args.separator_token)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        eos_token_id=separator,
        bos_token_id=separator,
        pad_token_id=tokenizer.pad_token_id,
        **values,
    )
    return AutoModelForCausalLM.from_config(config)


def check_upstream_folders(script_args: ScriptArguments) -> None:
    """Before a run starts: each upstream folder holds the stage its field names (the teacher a
    plain causal LM, the student a student, the emulator an emulator), so a misplaced folder stops
    here in one line instead of loading as a randomly initialised model."""
    from .kd.modeling_icot import WHAT_IT_IS, ImplicitCoTEmulator, ImplicitCoTStudent, check_folder_model_type

    for field_name, cls in (("student_name_or_path", ImplicitCoTStudent), ("emulator_name_or_path", ImplicitCoTEmulator)):
        path = getattr(script_args, field_name, None)
        if path:
            try:
                check_folder_model_type(cls, path)
            except ValueError as error:
                raise ValueError(f"{field_name}: {error}") from None
    teacher = script_args.teacher_name_or_path
    if teacher:
        try:
            model_type = PretrainedConfig.get_config_dict(teacher)[0].get("model_type")
        except OSError:
            return
        if model_type in WHAT_IT_IS:
            raise ValueError(f"teacher_name_or_path: {teacher} holds {WHAT_IT_IS[model_type]}; the teacher is the explicit-CoT "
                             "causal LM (recipes/teacher.py's output_dir)")


MODEL_SOURCES = ("teacher_name_or_path", "student_name_or_path", "emulator_name_or_path", "model_name_or_path", "tokenizer_name_or_path")


def looks_local(source: str) -> bool:
    """A path, not a Hub id: it exists, or it is absolute, relative to . or ~, or has more folders
    than a Hub id's `namespace/name`."""
    return os.path.exists(source) or source.startswith(("/", ".", "~")) or source.count("/") >= 2 or os.sep != "/" and os.sep in source


def check_local_sources(script_args) -> None:
    """Every model, tokenizer and data folder named by a path must be there before anything is
    written (transformers would say only that the name is not a valid Hub id)."""
    for name in (*MODEL_SOURCES, "dataset_name_or_path"):
        source = getattr(script_args, name, None)
        if source and looks_local(str(source)) and not os.path.exists(os.path.expanduser(str(source))):
            raise ValueError(f"{name}: {source}: no such file or folder (a path; a Hub id is `name` or `namespace/name`). "
                             "Nothing was written")


def begin_run(script_args, training_args) -> bool:
    """The recipes' first step: upstream folders' kinds (`check_upstream_folders`) and sources that
    are paths (`check_local_sources`) checked, then what the launch does with its output_dir
    (`run_record.begin_run`: False when this run is already done)."""
    check_upstream_folders(script_args)
    check_local_sources(script_args)
    return begin_run_record(script_args, training_args)


def load_teacher(script_args: ScriptArguments):
    if not script_args.teacher_name_or_path:
        raise ValueError("teacher_name_or_path is required: the trained explicit-CoT teacher (local folder or Hub id)")
    check_upstream_folders(script_args)
    return AutoModelForCausalLM.from_pretrained(script_args.teacher_name_or_path)


def check_same_tokenizer(tokenizer, source: str, other_path: str | None, what: str) -> None:
    """States and answers are indexed by token ids: a stage whose tokenizer differs from the
    tokenizer its teacher (or student and emulator) was trained with would read the wrong
    embeddings or index past them. Stop and say which two differ."""
    if not other_path:
        return
    try:
        other = AutoTokenizer.from_pretrained(other_path)
    except (OSError, ValueError):
        return  # a folder without a tokenizer: nothing to compare against
    if other.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{what} {other_path} was trained with another tokenizer ({len(other)} tokens) than this stage's "
                         f"({len(tokenizer)} tokens, from {source}); token ids must mean the same to both: drop "
                         f"tokenizer_name_or_path (the stage then uses {other_path}'s) or point it at {other_path}")


def distillation_tokenizer(script_args: ScriptArguments, upstream: dict[str, str | None]):
    """The tokenizer of a distillation stage (tokenizer_name_or_path, model_name_or_path's, else
    the first upstream folder's), checked against every upstream folder's."""
    fallback = next((path for path in upstream.values() if path), None)
    tokenizer = load_tokenizer(script_args, fallback_path=fallback)
    source = script_args.tokenizer_name_or_path or script_args.model_name_or_path or fallback or "the digit tokenizer"
    for what, path in upstream.items():
        check_same_tokenizer(tokenizer, source, path, what)
    return tokenizer


def build_distillation_base(script_args: ScriptArguments, tokenizer, teacher):
    """Base LM of a student or emulator: the teacher's weights, a pretrained model, or a
    config (default: the teacher's own config, trained from scratch)."""
    if script_args.init_from_teacher:
        return AutoModelForCausalLM.from_pretrained(script_args.teacher_name_or_path)
    if script_args.model_name_or_path or script_args.model_config:
        return build_base_model(script_args, tokenizer)
    return AutoModelForCausalLM.from_config(teacher.config)


def raw_splits(script_args: ScriptArguments, columns: tuple[str, ...]):
    """The train split and (where the dataset has it) the eval split, raw, cut to max_train_samples /
    max_eval_samples, with only `columns` kept: for the methods whose trainers tokenise for themselves
    (Coconut, CODI)."""
    from .data import load_icot_dataset

    dataset = load_icot_dataset(script_args.dataset_name_or_path)

    def split(name, limit):
        if name not in dataset:
            raise ValueError(f"no split {name!r} in the dataset; it has {list(dataset)}")
        part = dataset[name].select_columns([c for c in dataset[name].column_names if c in columns])
        return part.select(range(min(limit, len(part)))) if limit is not None else part

    train = split(script_args.train_split, script_args.max_train_samples)
    evaluation = None
    if script_args.eval_split and script_args.eval_split in dataset:
        evaluation = split(script_args.eval_split, script_args.max_eval_samples)
    return train, evaluation


def load_splits(script_args: ScriptArguments, tokenizer, views, context_length: int | None, reads_teacher_states: bool = False,
                step_ends: bool = False):
    """Tokenised train and eval splits (views as asked), checked against the model's context.
    `reads_teacher_states` (mind-reading, emulator): examples with an empty CoT are refused in
    training and left out of evaluation (data.without_empty_cot)."""
    dataset = load_icot_dataset(script_args.dataset_name_or_path)
    if script_args.train_split not in dataset:
        raise ValueError(f"{script_args.dataset_name_or_path}: no split {script_args.train_split!r}; it has {list(dataset)}")
    train = dataset[script_args.train_split]
    if script_args.max_train_samples is not None:
        if script_args.max_train_samples > len(train):  # said once: the run trains on less than asked
            logger.warning("max_train_samples %d > the %d examples of %s[%s]: training on all %d", script_args.max_train_samples, len(train),
                           script_args.dataset_name_or_path, script_args.train_split, len(train))
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if reads_teacher_states:
        train = without_empty_cot(train, f"{script_args.dataset_name_or_path}[{script_args.train_split}]", training=True)
    common = dict(views=views, separator_token=script_args.separator_token, max_length=context_length, on_overflow=script_args.on_overflow,
                  sequence_format=script_args.sequence_format, step_ends=step_ends)
    train = tokenize_dataset(train, tokenizer, split_name=f"{script_args.dataset_name_or_path}[{script_args.train_split}]", **common)
    evaluation = None
    if script_args.eval_split and script_args.eval_split in dataset:
        evaluation = dataset[script_args.eval_split]
        if script_args.max_eval_samples is not None:
            evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
        if reads_teacher_states:
            evaluation = without_empty_cot(evaluation, f"{script_args.dataset_name_or_path}[{script_args.eval_split}]", training=False)
        evaluation = tokenize_dataset(evaluation, tokenizer, split_name=f"{script_args.dataset_name_or_path}[{script_args.eval_split}]", **common)
    elif script_args.eval_split:
        logger.warning("%s has no split %r (it has %s): training without evaluation; set --eval_split to one of them",
                       script_args.dataset_name_or_path, script_args.eval_split, list(dataset))
    return train, evaluation


def attach_state_cache(train, teacher, tokenizer, views, training_args, script_args):
    """With `teacher_state_cache` set, `train` with the teacher's states as a column (the teacher
    then runs once over the split, not every step); else `train` as it is. Rank 0 builds the
    cache, the other ranks then read it. A cache from another teacher is rebuilt under
    `--rerun_if_changed` (a retrained teacher in `make reproduce`), refused otherwise."""
    if not training_args.teacher_state_cache:
        return train
    from .kd.state_cache import attach_teacher_states

    with training_args.main_process_first(desc="teacher-state cache"):
        return attach_teacher_states(train, teacher.to(training_args.device), collator_for(tokenizer, views), training_args.delta,
                                     training_args.subset, training_args.teacher_state_cache, training_args.per_device_eval_batch_size,
                                     rebuild_if_changed=script_args.rerun_if_changed)


def checkpoint_is_complete(path: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint without a readable one (with
    the step its folder is named after) was cut off mid-save."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return str(state.get("global_step")) == path.name.split("-")[-1]


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint to resume from, if an earlier run was interrupted.
    Checkpoints cut off mid-save are renamed `incomplete-checkpoint-N` (kept, never resumed)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    for path in sorted(root.glob("checkpoint-*")):
        if path.is_dir() and not checkpoint_is_complete(path):
            target = path.with_name(f"incomplete-{path.name}")
            logger.warning("%s was cut off mid-save; moved to %s and resuming from an earlier checkpoint", path, target)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
    candidate = get_last_checkpoint(str(root))
    if candidate is not None and not written_by_this_run(Path(candidate)):
        raise SystemExit(f"{candidate} is not a checkpoint this run wrote (it is not in {CHECKPOINTS_FILE}, or changed since): "
                         "resuming from it would load another run's state (under DeepSpeed, an unrestricted pickle). Move it out "
                         f"of the folder, pass --resume_from_checkpoint {candidate} if you trust it, or --overwrite_output_dir true.")
    return candidate


class RecordCheckpoints(TrainerCallback):
    """Note each checkpoint in the run's CHECKPOINTS_FILE (main process): announced when the
    Trainer decides to save, confirmed with its identity after the save."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and state.is_world_process_zero:
            record_checkpoint(Path(args.output_dir), Path(args.output_dir) / f"checkpoint-{state.global_step}", pending=True)

    on_epoch_end = on_step_end  # epoch-end saves are decided there

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                record_checkpoint(Path(args.output_dir), checkpoint)


def record_sequence_format(model, script_args: ScriptArguments) -> None:
    """Write the training sequence format into the model's config, for the answerers."""
    config = getattr(model, "config", None)
    if config is not None and script_args.sequence_format != "compact":
        config.icot_sequence_format = script_args.sequence_format


def train_and_save(trainer, training_args) -> dict:
    """Train (from `--resume_from_checkpoint` if given, else resuming from the last checkpoint
    if an earlier run of the same settings was interrupted), save the final model and
    tokenizer, evaluate, and mark the stage complete (`begin_run` has cleared the marker)."""
    start_run(training_args)  # everything loaded and checked: only now is an earlier run's folder changed
    trainer.add_callback(RecordCheckpoints())
    trainer.add_callback(ProgressFile())
    resume = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    metrics = dict(result.metrics, precision=precision_of(training_args))
    if torch.cuda.is_available():  # what the training steps held on the GPU at their peak (before evaluation)
        metrics["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.log_metrics("final", metrics)
    combined = Path(training_args.output_dir) / "all_results.json"
    if trainer.is_world_process_zero() and combined.exists() and read_json(combined) is None:
        combined.unlink()  # cut off by a kill as this run wrote it before: save_metrics would fail to read it back
    trainer.save_metrics("final", metrics)
    if trainer.is_world_process_zero():
        write_learning_curve(trainer, training_args.output_dir)
        finish_run(training_args.output_dir, metrics)
    return metrics
