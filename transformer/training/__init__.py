"""Training a model in a workdir: the loop, the train and eval steps, the run config and its
checks, the data plan and recipe, the time budget, checkpoints and averaging, the workdir and
its lock, validation and the test.
"""

from transformer import _lazy

_EXPORTS = {
  'train_and_evaluate': 'loop',
  'ConfigError': 'config',
  'validate_config': 'config',
  'TrainState': 'steps',
  'make_train_step': 'steps',
  'make_optimizer': 'steps',
  'Checkpointer': 'checkpoints',
  'load_model': 'workdir',
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
