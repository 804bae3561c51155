"""One line that names an exception, for messages that wrap it."""
from __future__ import annotations


def one_line(error: BaseException, limit: int = 300) -> str:
  """``'TypeName: first line of the message'``, the line cut at ``limit``
  characters (``'TypeName: '`` for an empty message)."""
  first = (str(error).strip().splitlines() or [''])[0]
  return f'{type(error).__name__}: {first[:limit]}'
