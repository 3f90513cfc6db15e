"""Trains the Transformer: `python train.py --workdir=DIR [--config=configs/X.py] [--config.key=value]`."""

import sys

if __name__ == '__main__':
  sys.exit('train.py: training is not built yet (see the training issue); the model modules are '
           'importable from `transformer`.')
