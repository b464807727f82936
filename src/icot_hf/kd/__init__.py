"""ICoT-KD (Deng et al. 2023, "Implicit Chain of Thought Reasoning via Knowledge Distillation"):
the mind-reading student, the thought emulator and their composite (the inference artifact),
the teacher states they learn from, and, loaded on first use, one trainer + config per stage
(the explicit-CoT teacher every method starts from is shared: `icot_hf.trainers`)."""

from .configuration_icot import ImplicitCoTConfig, ImplicitCoTEmulatorConfig, ImplicitCoTStudentConfig
from .modeling_icot import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from ..lazy import lazy_attributes

_LAZY = {
    "MindReadingConfig": ".mind_reading_config", "MindReadingTrainer": ".mind_reading_trainer",
    "ThoughtEmulationConfig": ".emulator_config", "ThoughtEmulationTrainer": ".emulator_trainer",
    "CoupledConfig": ".coupled_config", "CoupledTrainer": ".coupled_trainer",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["ImplicitCoTConfig", "ImplicitCoTEmulatorConfig", "ImplicitCoTStudentConfig", "ImplicitCoTEmulator", "ImplicitCoTForCausalLM",
           "ImplicitCoTStudent", *sorted(_LAZY)]
