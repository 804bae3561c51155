"""Wording shared by the library's one-line error messages."""
from __future__ import annotations

import os


def one_line(error: BaseException, limit: int = 300) -> str:
  """``'TypeName: first line of the message'``, the line cut at ``limit``
  characters (``'TypeName: '`` for an empty message)."""
  first = (str(error).strip().splitlines() or [''])[0]
  return f'{type(error).__name__}: {first[:limit]}'


def why_not_a_directory(path: str) -> str:
  """``'does not exist'`` or ``'is a file, not a directory'``, for a
  ``path`` that is not a directory."""
  return ('is a file, not a directory' if os.path.exists(path) else
          'does not exist')
