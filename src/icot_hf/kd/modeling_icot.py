"""ICoT-KD models as `PreTrainedModel`s: the mind-reading student, the thought emulator and
their composite `ImplicitCoTForCausalLM` (the inference artifact).

Each wraps an ordinary causal LM (`self.lm`, any decoder-only architecture) and edits
the hidden state at the first separator `s1` at the input of every decoder layer via
forward pre-hooks (`hooks.py`); nothing in the base model's code is forked.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from .configuration_icot import ImplicitCoTConfig, ImplicitCoTEmulatorConfig, ImplicitCoTStudentConfig
from .fused_inference import InferenceStep, can_fuse_emulator
from ..hooks import edit_layer_inputs, substitute_rows, substitute_states
from ..lora_wrapper import WrapsLoRA, is_lora_folder
from ..remote_code import CarriesItsCode
from ..generation import new_token_budget


WHAT_IT_IS = {"icot": "a coupled ImplicitCoTForCausalLM (load it with ImplicitCoTForCausalLM.from_pretrained; its parts are "
                      ".student and .emulator)",
              "icot_student": "a mind-reading student (ImplicitCoTStudent; pass it as student_name_or_path)",
              "icot_emulator": "a thought emulator (ImplicitCoTEmulator; pass it as emulator_name_or_path)"}


def check_folder_model_type(cls, path: str, **kwargs) -> None:
    """Refuse a folder (or Hub repo) that holds another kind of model than `cls`, naming what it
    holds: without this, transformers builds a randomly initialised model and only logs a report."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(path, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")})
    except OSError:
        return  # transformers' own error follows, naming what is missing
    found, expected = config.get("model_type"), cls.config_class.model_type
    if found == expected:
        return
    what = WHAT_IT_IS.get(found) or (f"a plain causal LM ({found}): a teacher, no-CoT or stepwise model; load it with "
                                     "AutoModelForCausalLM, or pass it as teacher_name_or_path" if found else "a config with no model_type")
    raise ValueError(f"{path}: {cls.__name__}.from_pretrained needs a folder saved from an {cls.__name__} (model_type "
                     f"{expected!r}); this one holds {what}")


def load_checked(load, cls, path: str, *args, **kwargs):
    """`load(path, ...)` (the parent from_pretrained) with missing or unexpected weights refused:
    a folder of the right type but the wrong weights must not come back half random."""
    wants_info = kwargs.pop("output_loading_info", False)
    try:
        model, info = load(path, *args, output_loading_info=True, **kwargs)
    except RuntimeError as error:  # transformers refuses tensors of the wrong shape after logging a report
        if "mismatched" not in str(error):
            raise
        raise ValueError(f"{path}: the weights do not fit {cls.__name__} (tensors of other shapes; see the report above): the "
                         "folder holds another model's weights") from None
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        listed = "; ".join(f"{k.replace('_', ' ')}: {v[:4]}{' ...' if len(v) > 4 else ''}" for k, v in problems.items() if v)
        raise ValueError(f"{path}: the weights do not fit {cls.__name__} ({listed}); the folder holds another model's weights "
                         "or an incomplete save")
    return (model, info) if wants_info else model


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left-padded rows start at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """Separator positions of left-padded `input S` prompts: the last column."""
    return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)


class StateMLP(nn.Sequential):
    """in -> ratio*out -> out with a ReLU, as in the paper's released code."""

    def __init__(self, in_features: int, out_features: int, ratio: int = 4):
        super().__init__(nn.Linear(in_features, ratio * out_features), nn.ReLU(), nn.Linear(ratio * out_features, out_features))


class ImplicitCoTPreTrainedModel(WrapsLoRA, CarriesItsCode, PreTrainedModel):
    base_model_prefix = "icot"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LSTMCell):
            module.reset_parameters()

    def _build_lm(self, base_config):
        # The base LM is built from its nested config; `from_base_model` swaps in pretrained weights.
        return AutoModelForCausalLM.from_config(base_config)

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    @property
    def num_layers(self) -> int:
        return int(self.config.base_config.num_hidden_layers)

    def select_teacher_layers(self, states: torch.Tensor) -> torch.Tensor:
        """(B, L_teacher, H) teacher states -> (B, L_self, H) per this model's layer mapping."""
        if self.config.teacher_layers is not None:
            return states[:, list(self.config.teacher_layers)]
        if states.shape[1] != self.num_layers:
            raise ValueError(
                f"got states for {states.shape[1]} layers but {type(self).__name__} has {self.num_layers}; "
                "set teacher_layers in its config to map teacher layers onto its own"
            )
        return states

    # ------------------------------------------------------------------ loading (LoRA folders included: lora_wrapper.py)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = str(pretrained_model_name_or_path)
        check_folder_model_type(cls, path, **kwargs)
        if is_lora_folder(path):
            return cls.from_lora_checkpoint(path)
        return load_checked(super().from_pretrained, cls, path, *args, **kwargs)

    @classmethod
    def from_base_model(cls, lm: PreTrainedModel, **config_kwargs):
        """Wrap an existing (e.g. pretrained) causal LM; the new modules start from scratch."""
        # A copy: building a config resets the attention implementation of the configs it
        # nests, and the live model must keep its own.
        config = cls.config_class(base_config=copy.deepcopy(lm.config), **config_kwargs)
        model = cls(config)
        model.lm = lm
        return model


class ImplicitCoTStudent(ImplicitCoTPreTrainedModel):
    """Mind-reading student: a causal LM that answers from given teacher states.

    At the input of layer l, the hidden state at each row's first separator is replaced
    by `mlp_l(state_l)`. Trained with the answer cross-entropy on the implicit view.
    """

    config_class = ImplicitCoTStudentConfig

    def __init__(self, config: ImplicitCoTStudentConfig):
        super().__init__(config)
        self.lm = self._build_lm(config.base_config)
        width = config.base_config.hidden_size
        self.state_mlps = nn.ModuleList(
            StateMLP(config.teacher_hidden_size, width, config.mlp_ratio) for _ in range(self.num_layers)
        )
        self.post_init()

    def state_vectors(self, teacher_states: torch.Tensor, mapped: bool = False) -> torch.Tensor:
        states = teacher_states if mapped else self.select_teacher_layers(teacher_states)
        return torch.stack([mlp(states[:, layer]) for layer, mlp in enumerate(self.state_mlps)], dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        teacher_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        separator_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        states_are_mapped: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if separator_positions is None:
            raise ValueError("separator_positions (B,) is required: the position of each row's first separator")
        vectors = self.state_vectors(teacher_states, states_are_mapped)
        with substitute_states(self.lm, separator_positions, vectors, input_ids.shape[1]):
            return self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask),
                labels=labels,
                use_cache=False,
                **kwargs,
            )

    @torch.no_grad()
    def generate(self, input_ids, teacher_states, attention_mask=None, states_are_mapped: bool = False, **generate_kwargs):
        """Generate from left-padded `input S` prompts; states substituted during prefill only.

        The KV cache is what carries the substituted states into every later token, so it is
        always on: a checkpoint saved with `use_cache=False` (as training leaves it) would
        otherwise recompute the prompt without the states at each step, silently and slowly."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if generate_kwargs.get("use_cache") is False:
            raise ValueError("ImplicitCoTStudent.generate needs the KV cache (use_cache=True): the states are substituted "
                             "in the prefill only, and the cache carries them to the later tokens")
        generate_kwargs["use_cache"] = True
        vectors = self.state_vectors(teacher_states, states_are_mapped)
        with substitute_states(self.lm, last_positions(input_ids), vectors, input_ids.shape[1]):
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


@dataclass
class ImplicitCoTEmulatorOutput(ModelOutput):
    loss: torch.Tensor | None = None
    predicted_states: torch.Tensor | None = None  # (B, L, H): f_l, what the student reads
    per_layer_mse: torch.Tensor | None = None  # (L,): batch-mean squared error per layer


class ImplicitCoTEmulator(ImplicitCoTPreTrainedModel):
    """Thought emulator: predicts the teacher's per-layer states from the question alone.

    Layer by layer (see DESIGN.md): read z_l at the separator, mix in the mixture table,
    predict f_l = mlp_l([z_l; mix]), feed f_l + context through an LSTM cell with
    attention over its own earlier keys, and write P([o; context]) back at the separator
    before layer l runs. Loss: sum_l ||f_l - teacher_l||^2 / 2, averaged over the batch.
    """

    config_class = ImplicitCoTEmulatorConfig

    def __init__(self, config: ImplicitCoTEmulatorConfig):
        super().__init__(config)
        self.lm = self._build_lm(config.base_config)
        width = config.base_config.hidden_size
        self.state_mlps = nn.ModuleList(StateMLP(2 * width, width, config.mlp_ratio) for _ in range(self.num_layers))
        self.mixture = nn.Embedding(config.mixture_size, width)
        self.lstm = nn.LSTMCell(width, width)
        self.key_proj = nn.Linear(width, width)
        self.query_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(2 * width, width)
        self.post_init()

    def _mix(self, z: torch.Tensor, temperature: float) -> torch.Tensor:
        table = self.mixture.weight
        if table.shape[0] == 1:
            return table.expand(z.shape[0], -1)
        weights = torch.softmax(z @ table.t() / temperature, dim=-1)
        return weights @ table

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        separator_positions: torch.Tensor | None = None,
        teacher_states: torch.Tensor | None = None,
        softmax_temperature: float | None = None,
        **kwargs,
    ) -> ImplicitCoTEmulatorOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if separator_positions is None:
            separator_positions = last_positions(input_ids)
        # States at s1 depend only on tokens up to s1 (causal attention): drop the rest.
        input_ids = input_ids[:, : int(separator_positions.max()) + 1]
        attention_mask = attention_mask[:, : input_ids.shape[1]]
        temperature = softmax_temperature or self.config.softmax_temperature
        batch, width = input_ids.shape[0], self.config.base_config.hidden_size
        if can_fuse_emulator(self):  # inference: the same step in fewer operations (fused_inference.py)
            step = InferenceStep(self, batch, temperature, input_ids.device, self.lstm.weight_ih.dtype)
            with edit_layer_inputs(self.lm, separator_positions, step, input_ids.shape[1]):
                self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask), use_cache=False)
            return self._output(step.predicted, teacher_states)
        predictions: list[torch.Tensor] = []
        keys: list[torch.Tensor] = []
        zeros = torch.zeros(batch, width, device=input_ids.device, dtype=self.lstm.weight_ih.dtype)
        carry = {"h": zeros, "c": zeros, "context": zeros}

        def edit(layer: int, hidden: torch.Tensor, index) -> torch.Tensor:
            z = index.gather(hidden).to(zeros.dtype)
            prediction = self.state_mlps[layer](torch.cat([z, self._mix(z, temperature)], dim=-1))
            predictions.append(prediction)
            h, c = self.lstm(prediction + carry["context"], (carry["h"], carry["c"]))
            carry["h"], carry["c"] = h, c
            key = self.key_proj(h)
            if keys:
                past = torch.stack(keys, dim=1)  # (B, l, H)
                weights = torch.softmax(torch.einsum("blh,bh->bl", past, self.query_proj(h)), dim=-1)
                carry["context"] = torch.einsum("bl,blh->bh", weights, past)
            keys.append(key)
            return substitute_rows(hidden, index, self.out_proj(torch.cat([h, carry["context"]], dim=-1)), layer)

        with edit_layer_inputs(self.lm, separator_positions, edit, input_ids.shape[1]):
            self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask), use_cache=False)
        return self._output(torch.stack(predictions, dim=1), teacher_states)

    def _output(self, predicted: torch.Tensor, teacher_states: torch.Tensor | None) -> ImplicitCoTEmulatorOutput:
        loss = per_layer = None
        if teacher_states is not None:
            target = self.select_teacher_layers(teacher_states).to(predicted.dtype)
            squared = (predicted - target).pow(2)
            per_layer = squared.sum(-1).mean(0).detach()
            loss = squared.sum(dim=(1, 2)).mean() / 2
        return ImplicitCoTEmulatorOutput(loss=loss, predicted_states=predicted, per_layer_mse=per_layer)


class ImplicitCoTForCausalLM(CarriesItsCode, PreTrainedModel):
    """Emulator + student: answers with no chain of thought.

    The emulator predicts the teacher's states from the question; the student answers
    with them substituted at the separator during prefill, and the KV cache carries
    them through decoding. Composed like `EncoderDecoderModel`: two full models, one
    config nesting both, saved and loaded as one.
    """

    config_class = ImplicitCoTConfig
    base_model_prefix = "icot"

    def __init__(self, config: ImplicitCoTConfig, emulator: ImplicitCoTEmulator | None = None, student: ImplicitCoTStudent | None = None):
        super().__init__(config)
        for part in (emulator, student):  # given parts are trained: post_init must not re-initialise any of them
            for module in part.modules() if part is not None else ():
                module._is_hf_initialized = True
        self.emulator = emulator if emulator is not None else ImplicitCoTEmulator(config.emulator)
        self.student = student if student is not None else ImplicitCoTStudent(config.student)
        # One source of truth: the composite's config nests the parts' live configs.
        self.config.emulator, self.config.student = self.emulator.config, self.student.config
        self.post_init()

    def _init_weights(self, module):
        pass  # both parts initialise themselves

    @classmethod
    def from_emulator_and_student(cls, emulator, student, separator_token_id: int, pad_token_id: int, max_answer_tokens: int = 64):
        config = ImplicitCoTConfig(
            emulator=copy.deepcopy(emulator.config),
            student=copy.deepcopy(student.config),
            separator_token_id=separator_token_id,
            pad_token_id=pad_token_id,
            max_answer_tokens=max_answer_tokens,
        )
        return cls(config, emulator=emulator, student=student)

    def get_input_embeddings(self):
        return self.student.get_input_embeddings()

    def merge_lora(self) -> "ImplicitCoTForCausalLM":
        """Fold both parts' LoRA adapters into their base weights."""
        self.emulator.merge_lora()
        self.student.merge_lora()
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        """With LoRA in either part, each part is saved in its own subfolder (adapter + non-base
        weights); otherwise one ordinary checkpoint."""
        if not (self.emulator.has_lora or self.student.has_lora):
            return super().save_pretrained(save_directory, *args, **kwargs)
        os.makedirs(save_directory, exist_ok=True)
        self.emulator.save_pretrained(os.path.join(save_directory, "emulator"))
        self.student.save_pretrained(os.path.join(save_directory, "student"))
        self.config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = str(pretrained_model_name_or_path)
        check_folder_model_type(cls, path, **kwargs)
        parts = [os.path.join(path, name) for name in ("emulator", "student")]
        if all(os.path.isdir(p) for p in parts) and not os.path.isfile(os.path.join(path, "model.safetensors")):
            config = cls.config_class.from_pretrained(path)
            return cls(config, emulator=ImplicitCoTEmulator.from_pretrained(parts[0]), student=ImplicitCoTStudent.from_pretrained(parts[1]))
        return load_checked(super().from_pretrained, cls, path, *args, **kwargs)

    def _states_are_mapped(self) -> bool:
        return self.config.emulator.teacher_layers == self.config.student.teacher_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        separator_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        softmax_temperature: float | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Implicit view `input S answer S` in; answer cross-entropy out."""
        emulated = self.emulator(input_ids, attention_mask, separator_positions, softmax_temperature=softmax_temperature)
        return self.student(
            input_ids, emulated.predicted_states, attention_mask=attention_mask, separator_positions=separator_positions,
            labels=labels, states_are_mapped=self._states_are_mapped(), **kwargs,
        )

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int | None = None, num_beams: int = 1, **generate_kwargs) -> torch.Tensor:
        """Answers for left-padded `input S` prompts; each row stops at its separator."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        emulated = self.emulator(input_ids, attention_mask, last_positions(input_ids))
        separator = self.config.separator_token_id
        settings = dict(
            max_new_tokens=new_token_budget(self.student.lm, input_ids.shape[1], max_new_tokens or self.config.max_answer_tokens),
            do_sample=False,
            num_beams=num_beams,
            eos_token_id=separator,
            pad_token_id=self.config.pad_token_id if self.config.pad_token_id is not None else separator,
        )
        settings.update(generate_kwargs)
        return self.student.generate(
            input_ids, emulated.predicted_states, attention_mask=attention_mask, states_are_mapped=self._states_are_mapped(), **settings
        )

    @torch.no_grad()
    def answer(self, questions: list[str], tokenizer, batch_size: int = 64, num_beams: int = 1) -> list[str]:
        """Raw question strings in (e.g. "1 2 3 4 * 5 6 7 8"), answer strings out."""
        from ..data import answer_from_generation, model_context_length, prompt_batch, sequence_format_of

        if isinstance(questions, str):  # one question: a string would be iterated as characters
            raise TypeError(f"answer() takes a list of questions; got one string {questions[:40]!r}: pass [question]")
        if questions is None or not hasattr(questions, "__iter__"):
            raise TypeError(f"answer() takes a list of question strings, got {type(questions).__name__}")
        questions = list(questions)
        wrong = [(i, type(q).__name__) for i, q in enumerate(questions) if not isinstance(q, str)]
        if wrong:
            raise TypeError(f"answer(): every question must be a string such as '1 2 3 4 * 5 6 7 8'; question(s) {wrong[:5]} (index, type) are not")
        if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"answer(): batch_size and num_beams must be integers >= 1, got {batch_size!r} and {num_beams!r}")
        empty = [i for i, q in enumerate(questions) if not str(q).strip()]
        if empty:
            raise ValueError(f"answer(): question(s) {empty[:10]} are empty; every question needs at least one token")
        answers: list[str] = []
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else self.config.separator_token_id
        for start in range(0, len(questions), batch_size):
            batch = prompt_batch(tokenizer, questions[start : start + batch_size], self.config.separator_token_id, pad, sequence_format_of(self))
            lengths = batch["attention_mask"].sum(1)
            context = model_context_length(self.student.lm.config)
            if context is not None and int(lengths.max()) >= context:  # before the emulator runs past its position table
                row = int(lengths.argmax())
                raise ValueError(f"answer(): question {start + row} is {int(lengths[row])} tokens with its separator; the model's "
                                 f"context is {context}, which leaves no room for an answer: shorten it")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            output = self.generate(**batch, num_beams=num_beams)
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                tokens = row[: row.index(self.config.separator_token_id)] if self.config.separator_token_id in row else row
                answers.append(answer_from_generation(tokenizer.decode(tokens, skip_special_tokens=True)))
        return answers
