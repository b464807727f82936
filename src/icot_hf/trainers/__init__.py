"""What every method's trainer shares (the base classes, the common config fields, inputs) and
the explicit-CoT teacher's trainer, the model every method starts from. Each method's own
trainers live in its folder (`icot_hf.kd`, `icot_hf.stepwise`, `icot_hf.coconut`); their names
also resolve here, as they did before the methods had folders."""

from .teacher_config import TeacherConfig
from .teacher_trainer import TeacherTrainer
from ..lazy import lazy_attributes

_ELSEWHERE = {
    "MindReadingConfig": "..kd", "MindReadingTrainer": "..kd", "ThoughtEmulationConfig": "..kd", "ThoughtEmulationTrainer": "..kd",
    "CoupledConfig": "..kd", "CoupledTrainer": "..kd",
    "StepwiseInternalizationConfig": "..stepwise", "StepwiseInternalizationTrainer": "..stepwise",
}


__getattr__ = lazy_attributes(__name__, _ELSEWHERE)


__all__ = ["TeacherConfig", "TeacherTrainer", *sorted(_ELSEWHERE)]
