"""Files written whole or not at all: JSON through a temporary file (`NAME.tmp<pid>`) and a
rename, so a reader never sees half a file, a failed write leaves the old file as it was, and a
killed writer's temporary is recognised (`abandoned_pid`) and removed by the next run."""

from __future__ import annotations

import json
import os
from typing import Any

TEMPORARY = '.tmp'  # NAME.tmp<pid>: the writer's pid says whether it still runs


def write_json(path: str, value: Any, *, indent: int | None = 2) -> None:
  """Writes `value` as JSON to `path` through a temporary file and a rename; nothing of the
  attempt outlives a failure (a full disk, an interrupt)."""
  temporary = f'{path}{TEMPORARY}{os.getpid()}'
  try:
    with open(temporary, 'w', encoding='utf-8') as f:
      json.dump(value, f, indent=indent)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def temporary_pid(name: str) -> int | None:
  """The pid of the writer of temporary file `name` (`NAME.tmp<pid>`), or None for another name."""
  stem, _, pid = name.rpartition(TEMPORARY)
  return int(pid) if stem and pid.isdigit() else None
