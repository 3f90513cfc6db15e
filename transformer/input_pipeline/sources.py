"""Where the parallel text comes from, read by index so that no process holds a whole split.

    dataset='bible_en_fr'            the corpus shipped in this package, a TFDS dataset prepared
                                     offline as ArrayRecord
    dataset='wmt14_translate/de-en'  any TFDS translation dataset, prepared once as ArrayRecord
                                     (TFDS downloads it on first use) and read with
                                     `tfds.data_source`: no TensorFlow at train time
    dataset='local'                  your files: local_files.train='data/train.tsv' (TSV with a
                                     header naming the languages) or 'data/train' for
                                     data/train.en + data/train.de; prepared once into ArrayRecord
                                     in a cache keyed by the files' content

A source has `len()`, `source[i]` and `source.__getitems__(indices)`, each giving `(source text,
target text)` pairs in the configured direction, and is picklable (grain's worker processes
read it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
from typing import Mapping, Sequence

from transformer.input_pipeline import corpus
from transformer.input_pipeline.corpus import DataError

EMBEDDED = 'bible_en_fr'
PREPARED_FORMAT = 'transformer-pairs-v2'  # part of the cache key: a new layout re-prepares
_LENGTH = struct.Struct('<I')


class TfdsPairs:
  """A split of a TFDS translation dataset, read by index from its ArrayRecord files."""

  def __init__(
    self, name: str, split: str, source_lang: str, target_lang: str, data_dir: str | None = None
  ):
    import tensorflow_datasets as tfds  # only where a TFDS dataset is used

    if name == EMBEDDED:
      from transformer.input_pipeline import bible_en_fr  # noqa: F401  (registers the builder)
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare(file_format='array_record')  # a no-op once prepared
    if builder.info.splits and split not in builder.info.splits:
      raise DataError(
        f'TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}'
      )
    languages = getattr(builder.info.features, 'languages', None) or list(
      builder.info.features.keys()
    )
    missing = [lang for lang in (source_lang, target_lang) if lang not in languages]
    if missing:
      raise DataError(
        f'TFDS dataset {name!r} has no language {missing[0]!r}; it has {sorted(languages)}'
      )
    file_format = getattr(builder.info, 'file_format', None) or 'array_record'
    file_format = str(getattr(file_format, 'value', file_format)).lower()
    if file_format != 'array_record':
      raise DataError(
        f'TFDS dataset {name!r} in {builder.data_dir} was prepared as {file_format}; this pipeline '
        'reads ArrayRecord: use another --config.tfds_data_dir to prepare it again'
      )
    self.records = tfds.data_source(name, split=split, data_dir=data_dir)
    self.languages = (source_lang, target_lang)
    self.description = f'tfds {name}[{split}]'
    # What the data is, for a resume to compare: the dataset's name, version and split.
    self.identity = f'tfds {name}:{builder.info.version}[{split}] {source_lang}-{target_lang}'

  def __len__(self) -> int:
    return len(self.records)

  def _pair(self, example: Mapping) -> tuple[str, str]:
    return tuple(_text(example[lang]) for lang in self.languages)  # type: ignore[return-value]

  def __getitem__(self, index: int) -> tuple[str, str]:
    return self._pair(self.records[index])

  def __getitems__(self, indices: Sequence[int]) -> list[tuple[str, str]]:
    indices = list(indices)
    raw = getattr(self.records, 'data_source', None)  # TFDS's ArrayRecord reader, if exposed
    if raw is not None:
      try:
        return [self._parse(record) for record in raw.__getitems__(indices)]
      except Exception:  # noqa: BLE001  features laid out otherwise: TFDS decodes them
        pass
    try:  # one batched read, decoded by TFDS
      examples = self.records.__getitems__(indices)
    except TypeError:  # a source without batched reads (e.g. tfds.testing.mock_data's)
      examples = [self.records[i] for i in indices]
    return [self._pair(example) for example in examples]

  def _parse(self, record: bytes) -> tuple[str, str]:
    """A serialized tf.train.Example with one bytes feature per language (how TFDS stores a
    Translation), parsed directly: several times faster than TFDS's generic decoding."""
    from tensorflow_datasets.proto import tf_example_pb2

    features = tf_example_pb2.Example.FromString(record).features.feature
    return tuple(features[lang].bytes_list.value[0].decode('utf-8') for lang in self.languages)  # type: ignore[return-value]


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def encode_pair(source: str, target: str) -> bytes:
  """One record of a prepared split: the source's byte length, then source and target, UTF-8."""
  source_bytes = source.encode('utf-8')
  return _LENGTH.pack(len(source_bytes)) + source_bytes + target.encode('utf-8')


def decode_pair(record: bytes) -> tuple[str, str]:
  (length,) = _LENGTH.unpack_from(record)
  start = _LENGTH.size
  return record[start : start + length].decode('utf-8'), record[start + length :].decode('utf-8')


class PreparedPairs:
  """A local split prepared into one ArrayRecord file (see `prepare_local`), read by index.

  The reader is opened where it is used (each grain worker process opens its own)."""

  def __init__(self, folder: str):
    self.folder = folder
    self.path = os.path.join(folder, 'pairs.array_record')
    with open(os.path.join(folder, 'report.json'), encoding='utf-8') as f:
      self.report = json.load(f)
    self.description = self.report['description']
    # What the data is, for a resume to compare: the files' content fingerprint (in the name).
    self.identity = f'{self.description} (contents {os.path.basename(folder).rsplit("-", 1)[-1]})'
    self._reader = None
    self._length = self._records().num_records()

  def _records(self):
    if self._reader is None:
      from array_record.python.array_record_module import ArrayRecordReader

      self._reader = ArrayRecordReader(self.path, 'readahead_buffer_size:0')
    return self._reader

  def __getstate__(self) -> dict:
    return {**self.__dict__, '_reader': None}

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> tuple[str, str]:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[tuple[str, str]]:
    return [decode_pair(record) for record in self._records().read([int(i) for i in indices])]


def _fingerprint(files: Sequence[str], *parts: object) -> str:
  """A hash of the files' contents and of `parts` (what else changes the prepared records)."""
  digest = hashlib.blake2b(repr((PREPARED_FORMAT, *parts)).encode(), digest_size=16)
  for path in files:
    with open(path, 'rb') as f:
      while block := f.read(1 << 20):
        digest.update(block)
    digest.update(b'\0end of file\0')
  return digest.hexdigest()


def _remove_abandoned_folders(cache_dir: str) -> None:
  """Deletes the half-prepared folders (`NAME.tmp-<pid>`) of processes that no longer run."""
  for name in os.listdir(cache_dir) if os.path.isdir(cache_dir) else ():
    stem, _, pid = name.rpartition('.tmp-')
    if stem and pid.isdigit() and not _process_runs(int(pid)):
      shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)


def _process_runs(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # raises ProcessLookupError for no such process; PermissionError: it runs
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def prepare_local(
  spec: str, source_lang: str, target_lang: str, cache_dir: str, *, skip_malformed: bool = False
) -> PreparedPairs:
  """A local split as an indexed ArrayRecord file, prepared once and reused.

  The folder `cache_dir/<name>-<fingerprint>` is keyed by the files' content, the languages and
  `skip_malformed`. Lines are streamed (constant memory); a malformed line raises CorpusError
  naming file:line and leaves nothing behind (the folder appears only when complete).
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  files = corpus.local_files(spec, source_lang, target_lang)
  for path in files:
    corpus.check_regular_file(path)
  key = _fingerprint(files, source_lang, target_lang, skip_malformed)
  _remove_abandoned_folders(cache_dir)
  folder = os.path.join(cache_dir, f'{os.path.basename(spec)}-{key[:16]}')
  if os.path.exists(os.path.join(folder, 'report.json')):
    return PreparedPairs(folder)
  temporary = f'{folder}.tmp-{os.getpid()}'
  try:
    os.makedirs(temporary, exist_ok=True)
    report = corpus.ReadReport(' + '.join(files))
    # Groups of 16 records keep random reads from a large file fast (docs/performance.md).
    writer = ArrayRecordWriter(os.path.join(temporary, 'pairs.array_record'), 'group_size:16')
    for pair in corpus.iter_local(
      spec, source_lang, target_lang, report, skip_malformed=skip_malformed
    ):
      writer.write(encode_pair(*pair))
    writer.close()
    contents = {
      'description': report.path,
      'summary': str(report),
      'pairs': report.pairs,
      'skipped': report.skipped,
      'reasons': report.reasons,
    }
    with open(os.path.join(temporary, 'report.json'), 'w', encoding='utf-8') as f:
      json.dump(contents, f, indent=2)
    os.replace(temporary, folder) if not os.path.exists(folder) else shutil.rmtree(temporary)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  return PreparedPairs(folder)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """Where one split of a run's data comes from (the run config's data fields)."""

  dataset: str
  split: str
  source_lang: str
  target_lang: str
  data_dir: str | None = None
  local_files: Mapping[str, str] | None = None
  cache_dir: str = ''
  skip_malformed: bool = False


def open_split(spec: SplitSpec) -> TfdsPairs | PreparedPairs:
  """The split as a random-access source of `(source, target)` text pairs."""
  if spec.dataset != 'local':
    return TfdsPairs(spec.dataset, spec.split, spec.source_lang, spec.target_lang, spec.data_dir)
  path = (spec.local_files or {}).get(spec.split)
  if not path:
    raise DataError(
      f"dataset='local' needs config.local_files.{spec.split} (a .tsv[.gz] file or a prefix of "
      f'.{spec.source_lang}/.{spec.target_lang} files)'
    )
  return prepare_local(
    path,
    spec.source_lang,
    spec.target_lang,
    spec.cache_dir or default_cache_dir(),
    skip_malformed=spec.skip_malformed,
  )


def default_cache_dir() -> str:
  """Where local files are prepared unless config.data_cache_dir says otherwise."""
  return os.path.join(os.path.expanduser('~'), '.cache', 'transformer', 'prepared')


def read_all(source, block: int = 4096) -> list[tuple[str, str]]:
  """Every pair of a source, in order (for the small validation and test splits)."""
  pairs: list[tuple[str, str]] = []
  for start in range(0, len(source), block):
    pairs += source.__getitems__(range(start, min(start + block, len(source))))
  return pairs


def read_split(
  dataset: str, split: str, source_lang: str, target_lang: str, **kwargs
) -> tuple[list[tuple[str, str]], str]:
  """All `(source, target)` pairs of one split and a one-line description of what was read."""
  source = open_split(SplitSpec(dataset, split, source_lang, target_lang, **kwargs))
  pairs = read_all(source)
  return pairs, f'{source.description}: {len(pairs)} pairs'
