"""TFDS builder for the embedded bible-en-fr corpus (public domain; see data/bible_en_fr/README.md).

It prepares offline from the files inside the package: no download.

    import tensorflow_datasets as tfds
    from transformer.input_pipeline import bible_en_fr  # registers 'bible_en_fr'
    builder = tfds.builder('bible_en_fr', data_dir=...)
    builder.download_and_prepare(file_format='array_record')
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from transformer.input_pipeline import corpus


class BibleEnFr(tfds.core.GeneratorBasedBuilder):
  """English–French verse pairs: World English Bible and Louis Segond 1910."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Verse-aligned pairs, split by whole chapter.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.Translation(languages=('en', 'fr')),
      supervised_keys=('en', 'fr'),
      homepage='https://ebible.org/',
      description=__doc__,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the files ship with the package
    folder = corpus.embedded_corpus_dir()
    return {
      split: self._generate_examples(os.path.join(folder, f'{split}.tsv.gz'))
      for split in corpus.EMBEDDED_SPLITS
    }

  def _generate_examples(self, path: str):
    pairs, _ = corpus.read_tsv(path, 'en', 'fr')
    for index, (en, fr) in enumerate(pairs):
      yield index, {'en': en, 'fr': fr}
