"""Training: settings resolved from the config, the trainer, checkpoints."""

from cellseg.training.settings import TrainSettings, load_config, resolve_settings
from cellseg.training.trainer import EXIT_TIME_BUDGET, Trainer

__all__ = ["EXIT_TIME_BUDGET", "TrainSettings", "Trainer", "load_config", "resolve_settings"]
