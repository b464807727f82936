"""One `transformers.Trainer` subclass per ICoT-KD stage, each with its own config."""

from .coupled_config import CoupledConfig
from .coupled_trainer import CoupledTrainer
from .emulator_config import ThoughtEmulationConfig
from .emulator_trainer import ThoughtEmulationTrainer
from .mind_reading_config import MindReadingConfig
from .mind_reading_trainer import MindReadingTrainer
from .stepwise_config import StepwiseInternalizationConfig
from .stepwise_trainer import StepwiseInternalizationTrainer
from .teacher_config import TeacherConfig
from .teacher_trainer import TeacherTrainer

__all__ = [
    "CoupledConfig",
    "CoupledTrainer",
    "MindReadingConfig",
    "MindReadingTrainer",
    "StepwiseInternalizationConfig",
    "StepwiseInternalizationTrainer",
    "TeacherConfig",
    "TeacherTrainer",
    "ThoughtEmulationConfig",
    "ThoughtEmulationTrainer",
]
