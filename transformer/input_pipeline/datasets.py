"""Where the parallel text comes from: the embedded corpus, any TFDS translation dataset, or local files.

dataset='bible_en_fr'            the corpus shipped in this package, as a TFDS dataset (offline)
dataset='wmt14_translate/de-en'  any TFDS translation dataset; source_lang/target_lang pick the
                                 direction (e.g. en -> de); TFDS downloads it on first use
dataset='local'                  your files: local_files.train='data/train.tsv' (TSV with a
                                 header naming the languages) or 'data/train' for
                                 data/train.en + data/train.de
"""

from __future__ import annotations

import logging
from typing import Mapping

from transformer.input_pipeline import corpus

EMBEDDED = 'bible_en_fr'


def _tfds_pairs(
  name: str, split: str, source_lang: str, target_lang: str, data_dir: str | None
) -> tuple[list[tuple[str, str]], str]:
  import tensorflow as tf  # only the input pipeline needs TensorFlow/TFDS
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], 'GPU')  # tf.data reads files on the host; the GPU is JAX's
  if name == EMBEDDED:
    from transformer.input_pipeline import bible_en_fr  # noqa: F401  (registers the builder)
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()  # a no-op once prepared; offline for the embedded corpus
  if (
    builder.info.splits and split not in builder.info.splits
  ):  # (empty when metadata is unknown, e.g. mocked)
    raise ValueError(
      f'TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}'
    )
  features = builder.info.features
  languages = getattr(features, 'languages', None) or list(features.keys())
  missing = [lang for lang in (source_lang, target_lang) if lang not in languages]
  if missing:
    raise ValueError(
      f'TFDS dataset {name!r} has no language {missing[0]!r}; it has {sorted(languages)}'
    )
  pairs = [
    (example[source_lang].decode('utf-8'), example[target_lang].decode('utf-8'))
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  ]
  return pairs, f'tfds {name}[{split}]: {len(pairs)} pairs'


def read_split(
  dataset: str,
  split: str,
  source_lang: str,
  target_lang: str,
  *,
  data_dir: str | None = None,
  local_files: Mapping[str, str] | None = None,
  skip_malformed: bool = False,
) -> tuple[list[tuple[str, str]], str]:
  """Raw `(source, target)` text pairs of one split, and a one-line report of what was read."""
  if dataset == 'local':
    path = (local_files or {}).get(split)
    if not path:
      raise ValueError(
        f"dataset='local' needs config.local_files.{split} (a .tsv[.gz] file or a "
        f'prefix of .{source_lang}/.{target_lang} files)'
      )
    pairs, report = corpus.read_local(path, source_lang, target_lang, skip_malformed=skip_malformed)
    if report.skipped:
      logging.warning('%s', report)
    return pairs, str(report)
  return _tfds_pairs(dataset, split, source_lang, target_lang, data_dir)
