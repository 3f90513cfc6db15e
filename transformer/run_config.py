"""The config reference: every numeric field of a run config and what it accepts, as the README's
table (`transformer.training.config.RANGES`).

    python -m transformer.run_config
"""

from transformer.training import config

if __name__ == '__main__':
  print(config.reference_table())
