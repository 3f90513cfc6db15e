"""Public names a package loads on first use (PEP 562), so that importing a package imports only
what the names a caller uses need: `import transformer` loads no JAX, and the translate command
checks its input before the model loads."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def exports(package: str, names: dict[str, str]) -> tuple[Callable, Callable]:
  """`(__getattr__, __dir__)` for `package`, whose public `names` map to the submodule (relative
  to `package`) that defines each."""

  def getattr_(name: str):
    if name in names:
      return getattr(importlib.import_module(f'{package}.{names[name]}'), name)
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  def dir_() -> list[str]:
    return sorted(set(vars(sys.modules[package])) | set(names))

  return getattr_, dir_
