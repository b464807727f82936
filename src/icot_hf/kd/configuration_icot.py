"""Configurations of the ICoT-KD models. Each nests the full config of its base causal
LM (like `EncoderDecoderConfig` nests its encoder's and decoder's), so a saved student,
emulator or composite loads with no other checkpoint at hand."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


def _layers_and_width(config: PreTrainedConfig) -> tuple[int, int]:
    return int(config.num_hidden_layers), int(config.hidden_size)


def _spread(teacher_num_layers: int, num_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the last one: the suggestion an error gives."""
    return [round((i + 1) * teacher_num_layers / num_layers) - 1 for i in range(num_layers)]


def _check_teacher_layers(teacher_layers, teacher_num_layers, num_layers, what):
    if teacher_layers is None:
        if teacher_num_layers is not None and teacher_num_layers != num_layers:
            raise ValueError(
                f"the teacher has {teacher_num_layers} layers but the {what} has {num_layers}: give teacher_layers, "
                f"a list of {num_layers} teacher layer indices (one per {what} layer; in a recipe config, e.g. "
                f"`teacher_layers: {_spread(teacher_num_layers, num_layers)}`), or use equal depths"
            )
        return
    if len(teacher_layers) != num_layers:
        raise ValueError(f"teacher_layers has {len(teacher_layers)} entries but the {what} has {num_layers} layers")
    limit = teacher_num_layers if teacher_num_layers is not None else float("inf")
    if any(not 0 <= int(i) < limit for i in teacher_layers):
        raise ValueError(f"teacher_layers {teacher_layers} has indices outside the teacher's {teacher_num_layers} layers")


class ImplicitCoTStudentConfig(PreTrainedConfig):
    r"""Mind-reading student: a causal LM plus one MLP `H_t -> 4H -> H` per layer that maps
    the teacher's (or emulator's) state for that layer into the student's hidden space.

    Args:
        base_config: config of the wrapped causal LM (any decoder-only model).
        teacher_num_layers / teacher_hidden_size: shape of the states it reads; default to
            the base model's own. A different depth needs `teacher_layers`.
        teacher_layers: which teacher layer feeds each student layer (length = student depth).
    """

    model_type = "icot_student"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    base_config: PreTrainedConfig | dict | None = None
    teacher_num_layers: int | None = None
    teacher_hidden_size: int | None = None
    teacher_layers: list | None = None
    mlp_ratio: int = 4
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        layers, width = _layers_and_width(self.base_config)
        if self.teacher_hidden_size is None:
            self.teacher_hidden_size = width
        if self.teacher_num_layers is None:
            self.teacher_num_layers = layers if self.teacher_layers is None else max(self.teacher_layers) + 1
        _check_teacher_layers(self.teacher_layers, self.teacher_num_layers, layers, "student")


class ImplicitCoTEmulatorConfig(PreTrainedConfig):
    r"""Thought emulator: a causal LM that predicts, from the question alone, the teacher's
    normalised state for every layer (per-layer MLP `2H -> 4H -> H`, a mixture table of
    `mixture_size` vectors mixed with softmax temperature, and an LSTM cell with attention
    over its own past keys that writes back at the separator before each layer)."""

    model_type = "icot_emulator"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    base_config: PreTrainedConfig | dict | None = None
    mixture_size: int = 1
    softmax_temperature: float = 0.05
    teacher_num_layers: int | None = None
    teacher_hidden_size: int | None = None
    teacher_layers: list | None = None
    mlp_ratio: int = 4
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        layers, width = _layers_and_width(self.base_config)
        if self.mixture_size < 1:
            raise ValueError(f"mixture_size must be >= 1, got {self.mixture_size}")
        if self.softmax_temperature <= 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature}")
        if self.teacher_hidden_size is None:
            self.teacher_hidden_size = width
        if self.teacher_hidden_size != width:
            raise ValueError(
                f"the emulator predicts the teacher's states, so its hidden size ({width}) must equal the teacher's "
                f"({self.teacher_hidden_size}); pick an emulator base model of width {self.teacher_hidden_size}"
            )
        if self.teacher_num_layers is None:
            self.teacher_num_layers = layers if self.teacher_layers is None else max(self.teacher_layers) + 1
        _check_teacher_layers(self.teacher_layers, self.teacher_num_layers, layers, "emulator")


class ImplicitCoTConfig(PreTrainedConfig):
    r"""Emulator + student, the inference artifact `ImplicitCoTForCausalLM`."""

    model_type = "icot"
    sub_configs_defaults = {
        "emulator": SubConfigSpec(config_class=ImplicitCoTEmulatorConfig),
        "student": SubConfigSpec(config_class=ImplicitCoTStudentConfig),
    }

    emulator: PreTrainedConfig | dict | None = None
    student: PreTrainedConfig | dict | None = None
    separator_token_id: int | None = None
    pad_token_id: int | None = None
    max_answer_tokens: int = 64

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.emulator.teacher_num_layers != self.student.teacher_num_layers:
            raise ValueError(
                f"the emulator predicts {self.emulator.teacher_num_layers} teacher layers but the student reads "
                f"{self.student.teacher_num_layers}; train both against the same teacher"
            )
        if self.emulator.teacher_hidden_size != self.student.teacher_hidden_size:
            raise ValueError(
                f"emulator states have width {self.emulator.teacher_hidden_size} but the student's MLPs expect "
                f"{self.student.teacher_hidden_size}"
            )

    @property
    def num_hidden_layers(self) -> int:
        return int(self.student.base_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.student.base_config.hidden_size)
