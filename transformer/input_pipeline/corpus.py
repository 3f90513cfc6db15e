"""Reading parallel text from local files, with errors that name the file and line.

Two layouts are supported, both UTF-8, optionally gzip-compressed (`.gz`):
- a TSV file with a header line naming the columns (e.g. `id<TAB>en<TAB>fr`); the source and
  target languages are picked by column name;
- one file per language with the same number of lines (`train.en`, `train.fr`).

A malformed line (wrong column count, empty side, invalid UTF-8, wrong header) raises
`CorpusError` naming the file and line number. With `skip_malformed=True` such lines are skipped
instead, and the count is returned in `ReadReport` so that nothing is dropped silently.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gzip
import os
import stat
from typing import Callable, Iterator, Sequence


class DataError(ValueError):
  """The configured data cannot be used (a missing or empty split, an unknown dataset, ...)."""


class CorpusError(DataError):
  """A corpus file is malformed; the message names the file and the line."""


@dataclasses.dataclass
class ReadReport:
  """What reading a corpus did: pairs kept and lines skipped (with the first few reasons)."""

  path: str
  pairs: int = 0
  skipped: int = 0
  reasons: list[str] = dataclasses.field(default_factory=list)

  def skip(self, reason: str) -> None:
    self.skipped += 1
    if len(self.reasons) < 5:
      self.reasons.append(reason)

  def __str__(self) -> str:
    text = f'{self.path}: {self.pairs} pairs'
    if self.skipped:
      text += f', {self.skipped} malformed lines skipped (e.g. {self.reasons[0]})'
    return text


def check_regular_file(path: str) -> None:
  """Raises CorpusError, one line, unless `path` is a regular file this process can read (a named
  pipe would block the reader forever, a directory cannot be read as lines)."""
  if not os.path.exists(path):
    raise CorpusError(f'{path}: file not found')
  if os.path.isdir(path):
    raise CorpusError(f'{path}: a directory, not a data file')
  if not stat.S_ISREG(os.stat(path).st_mode):
    raise CorpusError(f'{path}: not a regular file (a named pipe or device cannot be read twice)')
  if not os.access(path, os.R_OK):
    raise CorpusError(f'{path}: not readable (permission denied)')


def _open_binary(path: str):
  check_regular_file(path)
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  """(line number, line without its `\n` or `\r\n`) of a text file as people make them: a
  UTF-8 byte-order mark is dropped, and blank lines at the end of the file are not lines (blank
  lines before the end are, and the parsers refuse them)."""
  with _open_binary(path) as f:
    blank: list[tuple[int, bytes]] = []  # held back until a non-blank line follows
    try:
      for number, raw in enumerate(f, start=1):
        line = raw.rstrip(b'\r\n')
        if number == 1 and line.startswith(codecs.BOM_UTF8):
          line = line[len(codecs.BOM_UTF8) :]
        if not line.strip():
          blank.append((number, line))
          continue
        yield from blank
        blank = []
        yield number, line
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
      raise CorpusError(f'{path}: cannot be read ({e})') from e


def _decode(path: str, number: int, raw: bytes) -> str:
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise CorpusError(f'{path}:{number}: invalid UTF-8 at byte {e.start}') from e


def _stream(
  parsers: Iterator[Callable[[], tuple[str, str]]], report: ReadReport, skip_malformed: bool
) -> Iterator[tuple[str, str]]:
  """Runs one parser per line and yields its pair; a CorpusError stops the read, or is counted
  with `skip_malformed`. `report.pairs` counts the pairs yielded so far.

  Errors raised by the iterator itself (not by a line's parser) always stop the read."""
  for parse in parsers:
    try:
      pair = parse()
    except CorpusError as e:
      if not skip_malformed:
        raise
      report.skip(str(e))
      continue
    report.pairs += 1
    yield pair


def iter_tsv(
  path: str,
  source_column: str,
  target_column: str,
  report: ReadReport,
  *,
  skip_malformed: bool = False,
) -> Iterator[tuple[str, str]]:
  """Streams `(source, target)` pairs from a TSV file with a header line naming the columns.

  Args:
    path: the file (`.gz` is decompressed).
    source_column, target_column: header names of the two sides (e.g. 'en', 'fr').
    report: counts the pairs read and the lines skipped.
    skip_malformed: skip (and count) bad lines instead of raising.
  """
  lines = _lines(path)
  try:
    number, raw = next(lines)
  except StopIteration:
    raise CorpusError(f'{path}: empty file (expected a header line)') from None
  header = _decode(path, number, raw).split('\t')
  missing = [c for c in (source_column, target_column) if c not in header]
  if missing:
    raise CorpusError(
      f'{path}:1: header {header} has no column {missing[0]!r} '
      f'(expected a header naming {source_column!r} and {target_column!r})'
    )
  src_index, tgt_index = header.index(source_column), header.index(target_column)

  def parse(number: int, raw: bytes) -> tuple[str, str]:
    fields = _decode(path, number, raw).split('\t')
    if len(fields) != len(header):
      raise CorpusError(
        f'{path}:{number}: expected {len(header)} tab-separated columns, found {len(fields)}'
      )
    source, target = fields[src_index].strip(), fields[tgt_index].strip()
    if not source or not target:
      side = source_column if not source else target_column
      raise CorpusError(f'{path}:{number}: empty {side!r} side')
    return source, target

  yield from _stream((functools.partial(parse, n, r) for n, r in lines), report, skip_malformed)


def iter_parallel_files(
  source_path: str, target_path: str, report: ReadReport, *, skip_malformed: bool = False
) -> Iterator[tuple[str, str]]:
  """Streams `(source, target)` pairs from two line-aligned files (one sentence per line)."""

  def parse(number: int, source_raw: bytes, target_raw: bytes) -> tuple[str, str]:
    source = _decode(source_path, number, source_raw).strip()
    target = _decode(target_path, number, target_raw).strip()
    if not source or not target:
      path = source_path if not source else target_path
      raise CorpusError(f'{path}:{number}: empty line (the other side is not empty)')
    return source, target

  def parsers():
    source_lines, target_lines = _lines(source_path), _lines(target_path)
    while True:
      s, t = next(source_lines, None), next(target_lines, None)
      if s is None and t is None:
        return
      if s is None or t is None:  # a structural error: never skipped
        shorter, longer = (source_path, target_path) if s is None else (target_path, source_path)
        raise CorpusError(
          f'{shorter}: has fewer lines than {longer} (which continues at line {(t or s)[0]})'
        )
      yield functools.partial(parse, s[0], s[1], t[1])

  yield from _stream(parsers(), report, skip_malformed)


def local_files(spec: str, source_lang: str, target_lang: str) -> list[str]:
  """The files of a local split: `[file.tsv[.gz]]`, or `[prefix.src, prefix.tgt]`."""
  if spec.endswith(('.tsv', '.tsv.gz')):
    return [spec]
  return [f'{spec}.{source_lang}', f'{spec}.{target_lang}']


def iter_local(
  spec: str, source_lang: str, target_lang: str, report: ReadReport, *, skip_malformed: bool = False
) -> Iterator[tuple[str, str]]:
  """Streams a local split given as `file.tsv[.gz]` or `prefix` with `prefix.{src}`/`prefix.{tgt}`."""
  files = local_files(spec, source_lang, target_lang)
  if len(files) == 1:
    return iter_tsv(spec, source_lang, target_lang, report, skip_malformed=skip_malformed)
  return iter_parallel_files(*files, report, skip_malformed=skip_malformed)


def read_tsv(
  path: str, source_column: str, target_column: str, *, skip_malformed: bool = False
) -> tuple[list[tuple[str, str]], ReadReport]:
  """All pairs of a TSV file (see `iter_tsv`) and the `ReadReport`."""
  report = ReadReport(path)
  pairs = list(iter_tsv(path, source_column, target_column, report, skip_malformed=skip_malformed))
  return pairs, report


def read_parallel_files(
  source_path: str, target_path: str, *, skip_malformed: bool = False
) -> tuple[list[tuple[str, str]], ReadReport]:
  """All pairs of two line-aligned files (see `iter_parallel_files`) and the `ReadReport`."""
  report = ReadReport(f'{source_path} + {target_path}')
  pairs = list(iter_parallel_files(source_path, target_path, report, skip_malformed=skip_malformed))
  return pairs, report


def embedded_corpus_dir() -> str:
  """Folder of the bible-en-fr corpus shipped inside the package."""
  return os.path.join(os.path.dirname(__file__), 'data', 'bible_en_fr')


EMBEDDED_SPLITS: Sequence[str] = ('train', 'validation', 'test')
