"""icot_hf: implicit chain-of-thought reasoning on the Hugging Face stack.

One subpackage per method (`kd`: ICoT-KD, `stepwise`: ICoT-SI, `coconut`: Coconut, `codi`: CODI), each with
its configuration, modeling, trainer and training config side by side; what every method shares
(data, generation, evaluation, run records, hub, CLI) sits here at the top. Every public name of
every method is importable from `icot_hf` itself."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .coconut import CoconutModelConfig, CoconutForCausalLM
from .codi import CODIModelConfig, CODIForCausalLM
from .kd import ImplicitCoTConfig, ImplicitCoTEmulator, ImplicitCoTEmulatorConfig, ImplicitCoTForCausalLM, ImplicitCoTStudent, ImplicitCoTStudentConfig
from .stepwise import ImplicitCoTStepwiseConfig, ImplicitCoTStepwiseForCausalLM
from .moved import install as _install_moved_module_paths
from .tokenization import build_digit_tokenizer
from .lazy import lazy_attributes

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    pairs = [
        (ImplicitCoTStudentConfig, ImplicitCoTStudent, AutoModel, "AutoModel"),
        (ImplicitCoTEmulatorConfig, ImplicitCoTEmulator, AutoModel, "AutoModel"),
        (ImplicitCoTConfig, ImplicitCoTForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
        (ImplicitCoTStepwiseConfig, ImplicitCoTStepwiseForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
        (CoconutModelConfig, CoconutForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
        (CODIModelConfig, CODIForCausalLM, AutoModelForCausalLM, "AutoModelForCausalLM"),
    ]
    for config_class, model_class, auto_model, auto_name in pairs:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        auto_model.register(config_class, model_class, exist_ok=True)
        # Saved folders also carry the code, so `trust_remote_code=True` loads them without icot_hf.
        config_class.register_for_auto_class()
        model_class.register_for_auto_class(auto_name)


_register_auto_classes()
_install_moved_module_paths()

# Trainers, their configs and the data helpers load on first use (`from icot_hf import
# TeacherTrainer`): importing the Trainer stack is not needed to load or run a model.
_LAZY = {
    **{name: ".trainers" for name in ("TeacherConfig", "TeacherTrainer")},
    **{name: ".kd" for name in ("CoupledConfig", "CoupledTrainer", "MindReadingConfig", "MindReadingTrainer", "ThoughtEmulationConfig",
                                "ThoughtEmulationTrainer")},
    **{name: ".stepwise" for name in ("StepwiseInternalizationConfig", "StepwiseInternalizationTrainer")},
    **{name: ".coconut.coconut_trainer" for name in ("CoconutTrainer",)},
    **{name: ".coconut.coconut_config" for name in ("CoconutConfig",)},
    **{name: ".codi.codi_trainer" for name in ("CODITrainer",)},
    **{name: ".codi.codi_config" for name in ("CODIConfig",)},
    **{name: ".data" for name in ("ICoTCollator", "load_icot_dataset", "tokenize_dataset", "read_icot_text")},
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    *sorted(_LAZY),
    "CoconutModelConfig",
    "CoconutForCausalLM",
    "CODIModelConfig",
    "CODIForCausalLM",
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
