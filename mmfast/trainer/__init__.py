"""mmfast.trainer: MMRec's training protocol with checkpoints, resume, grid search and logs.

``mmfast.trainer.run(config)`` trains every grid point of a resolved config (see
:func:`mmfast.trainer.config.resolve`) and returns a :class:`RunResult`;
``python -m mmfast.train`` is the command line over it.
"""
from mmfast.trainer.config import ConfigError, grid_points, resolve
from mmfast.trainer.early_stopping import EarlyStopping
from mmfast.trainer.experiment import RunResult, run
from mmfast.trainer.fit import Trainer, TrainingInterrupted

__all__ = [
    "ConfigError", "EarlyStopping", "RunResult", "Trainer", "TrainingInterrupted",
    "grid_points", "resolve", "run",
]
