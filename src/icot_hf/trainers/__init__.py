"""What every method's trainer shares (the base classes, the common config fields, inputs) and
the explicit-CoT teacher's trainer, the model every method starts from. Each method's own
trainers live in its folder (`icot_hf.kd`, `icot_hf.stepwise`, `icot_hf.coconut`); their names
also resolve here, as they did before the methods had folders."""

from .teacher_config import TeacherConfig
from .teacher_trainer import TeacherTrainer

_ELSEWHERE = {
    "MindReadingConfig": "..kd", "MindReadingTrainer": "..kd", "ThoughtEmulationConfig": "..kd", "ThoughtEmulationTrainer": "..kd",
    "CoupledConfig": "..kd", "CoupledTrainer": "..kd",
    "StepwiseInternalizationConfig": "..stepwise", "StepwiseInternalizationTrainer": "..stepwise",
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TeacherConfig", "TeacherTrainer", *sorted(_ELSEWHERE)]
