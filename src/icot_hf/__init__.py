"""icot_hf: implicit chain-of-thought reasoning via knowledge distillation, on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .coconut import CoconutModelConfig, CoconutForCausalLM
from .configuration_icot import ImplicitCoTConfig, ImplicitCoTEmulatorConfig, ImplicitCoTStepwiseConfig, ImplicitCoTStudentConfig
from .modeling_icot import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from .modeling_stepwise import ImplicitCoTStepwiseForCausalLM
from .tokenization import build_digit_tokenizer

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    pairs = [
        (ImplicitCoTStudentConfig, ImplicitCoTStudent, AutoModel, "AutoModel"),
        (ImplicitCoTEmulatorConfig, ImplicitCoTEmulator, AutoModel, "AutoModel"),
        (ImplicitCoTConfig, ImplicitCoTForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
        (ImplicitCoTStepwiseConfig, ImplicitCoTStepwiseForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
        (CoconutModelConfig, CoconutForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
    ]
    for config_class, model_class, auto_model, auto_name in pairs:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        auto_model.register(config_class, model_class, exist_ok=True)
        # Saved folders also carry the code, so `trust_remote_code=True` loads them without icot_hf.
        config_class.register_for_auto_class()
        model_class.register_for_auto_class(auto_name)


_register_auto_classes()

# Trainers, their configs and the data helpers load on first use (`from icot_hf import
# TeacherTrainer`): importing the Trainer stack is not needed to load or run a model.
_LAZY = {
    **{name: ".trainers" for name in ("CoupledConfig", "CoupledTrainer", "MindReadingConfig", "MindReadingTrainer",
                                      "StepwiseInternalizationConfig", "StepwiseInternalizationTrainer", "TeacherConfig",
                                      "TeacherTrainer", "ThoughtEmulationConfig", "ThoughtEmulationTrainer")},
    **{name: ".coconut.coconut_trainer" for name in ("CoconutTrainer",)},
    **{name: ".coconut.coconut_config" for name in ("CoconutConfig",)},
    **{name: ".data" for name in ("ICoTCollator", "load_icot_dataset", "tokenize_dataset", "read_icot_text")},
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'icot_hf' has no attribute {name!r}")


__all__ = [
    *sorted(_LAZY),
    "CoconutModelConfig",
    "CoconutForCausalLM",
    "ImplicitCoTConfig",
    "ImplicitCoTEmulatorConfig",
    "ImplicitCoTStepwiseConfig",
    "ImplicitCoTStepwiseForCausalLM",
    "ImplicitCoTStudentConfig",
    "ImplicitCoTEmulator",
    "ImplicitCoTForCausalLM",
    "ImplicitCoTStudent",
    "build_digit_tokenizer",
]
