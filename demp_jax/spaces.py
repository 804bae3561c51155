"""Index spaces: which array axes are indexed by the same thing.

A union-find over *spaces*, the sets of indices an array axis runs over.
Two axes that an operation lines up index by index are joined into one
space. A space may have structure: a *concatenation* of parts (each at the
offset of the parts before it) or a *product* of factors (row-major, the
last fastest: the axis of an NHWC flatten is ``[H][W][C]``). Marks on a
space (why it cannot be pruned; what would make pruning it unsafe) reach
every space inside it.

Used by :mod:`demp_jax.derive`, which follows a model's axes through its
forward pass.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


class Spaces:
  """A union-find of index spaces with structure.

  A space is an atom, a concatenation ``('cat', parts)`` (part ``k`` at
  the offset of the sizes before it) or a product ``('prod', factors)``
  (row-major, the last factor fastest). Joining an atom with a structured
  space gives the atom that structure; two concatenations are cut to
  common boundaries and joined part by part; two products with the same
  factor sizes are joined factor by factor; anything else cannot be lined
  up and both spaces are marked not prunable.
  """

  def __init__(self):
    self._parent: list[int] = []
    self.size: list[int] = []
    self._struct: dict[int, tuple[str, list[int]]] = {}
    self._up: dict[int, set[int]] = {}
    self._reasons: dict[int, list[str]] = {}
    self._hazards: dict[int, list[str]] = {}
    self._kept: set[int] = set()

  def new(self, size: int, reason: Optional[str] = None) -> int:
    c = len(self._parent)
    self._parent.append(c)
    self.size.append(int(size))
    if reason:
      self._reasons[c] = [reason]
    return c

  def find(self, c: int) -> int:
    root = c
    while self._parent[root] != root:
      root = self._parent[root]
    while self._parent[c] != root:
      self._parent[c], c = root, self._parent[c]
    return root

  def keep_size_one(self, c: int) -> None:
    """Marks ``c`` as an axis of its own even at size 1: joined with the
    size-1 axes it meets, not taken for a broadcast."""
    self._kept.add(self.find(c))

  def is_kept(self, c: int) -> bool:
    return self.find(c) in self._kept

  def struct(self, c: int) -> Optional[tuple[str, list[int]]]:
    return self._struct.get(self.find(c))

  def freeze(self, c: int, reason: str) -> None:
    r = self.find(c)
    self._reasons.setdefault(r, [])
    if reason not in self._reasons[r]:
      self._reasons[r].append(reason)

  def hazard(self, c: int, message: str) -> None:
    r = self.find(c)
    self._hazards.setdefault(r, [])
    if message not in self._hazards[r]:
      self._hazards[r].append(message)

  def _set_struct(self, c: int, kind: str, parts: list[int]) -> None:
    r = self.find(c)
    self._struct[r] = (kind, list(parts))
    for p in parts:
      self._up.setdefault(self.find(p), set()).add(r)

  def _link(self, child: int, root: int) -> None:
    self._parent[child] = root
    if child in self._kept:
      self._kept.discard(child)
      self._kept.add(root)
    for table in (self._reasons, self._hazards):
      if child in table:
        for m in table.pop(child):
          if m not in table.setdefault(root, []):
            table[root].append(m)
    if child in self._up:
      self._up.setdefault(root, set()).update(self._up.pop(child))
    self._struct.pop(child, None)

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if self.size[ra] != self.size[rb]:
      msg = f'index spaces of sizes {self.size[ra]} and {self.size[rb]} meet'
      self.freeze(ra, msg)
      self.freeze(rb, msg)
      return
    sa, sb = self._struct.get(ra), self._struct.get(rb)
    if sa is None:
      self._link(ra, rb)
      return
    if sb is None:
      self._link(rb, ra)
      return
    if sa[0] == sb[0] == 'cat':
      cuts = sorted(set(self.cuts(ra)) | set(self.cuts(rb)))
      pa, pb = self.pieces(ra, cuts), self.pieces(rb, cuts)
      if pa is not None and pb is not None:
        self._link(rb, ra)
        for x, y in zip(pa, pb):
          self.union(x, y)
        return
    elif (sa[0] == sb[0] == 'prod' and
          [self.size[self.find(p)] for p in sa[1]] ==
          [self.size[self.find(p)] for p in sb[1]]):
      self._link(rb, ra)
      for x, y in zip(sa[1], sb[1]):
        self.union(x, y)
      return
    msg = 'two layouts of one axis that do not line up'
    self.freeze(ra, msg)
    self.freeze(rb, msg)
    self._link(rb, ra)

  def cuts(self, c: int, offset: int = 0) -> list[int]:
    """Interior boundaries of a concatenated space (recursively)."""
    st = self.struct(c)
    if st is None or st[0] != 'cat':
      return []
    out, off = [], offset
    for p in st[1]:
      out += self.cuts(p, off)
      off += self.size[self.find(p)]
      out.append(off)
    return [x for x in out if offset < x < offset + self.size[self.find(c)]]

  def pieces(self, c: int, cuts: list[int]) -> Optional[list[int]]:
    """The space cut at ``cuts`` (sorted, interior): its parts in order,
    atoms cut into concatenations as needed; None for a product."""
    r = self.find(c)
    cuts = [x for x in cuts if 0 < x < self.size[r]]
    st = self._struct.get(r)
    if not cuts:
      return [r]
    if st is None:
      bounds = [0] + cuts + [self.size[r]]
      parts = [self.new(b - a) for a, b in zip(bounds, bounds[1:])]
      for p in parts:
        for m in self._reasons.get(r, []):
          self.freeze(p, m)
      self._set_struct(r, 'cat', parts)
      return parts
    if st[0] != 'cat':
      return None
    out, off = [], 0
    for p in st[1]:
      s = self.size[self.find(p)]
      sub = self.pieces(p, [x - off for x in cuts if off < x < off + s])
      if sub is None:
        return None
      out += sub
      off += s
    return out

  def factors(self, c: int) -> list[int]:
    """A product space's factors (recursively), else ``[c]``."""
    st = self.struct(c)
    if st is None or st[0] != 'prod':
      return [self.find(c)]
    return [f for p in st[1] for f in self.factors(p)]

  def split_factor(self, c: int, sizes: list[int]) -> Optional[list[int]]:
    """Makes an atom space the product of new factors of ``sizes``."""
    r = self.find(c)
    if r in self._struct:
      return None
    parts = [self.new(s) for s in sizes]
    self._set_struct(r, 'prod', parts)
    return parts

  def product(self, factors: list[int]) -> int:
    if len(factors) == 1:
      return self.find(factors[0])
    c = self.new(math.prod(self.size[self.find(f)] for f in factors))
    self._set_struct(c, 'prod', factors)
    return c

  def concat(self, parts: list[int]) -> int:
    c = self.new(sum(self.size[self.find(p)] for p in parts))
    self._set_struct(c, 'cat', parts)
    return c

  def layout(self, c: int) -> list[tuple[int, np.ndarray]]:
    """``[(atom, index)]``: for every atom space inside ``c``, the unit of
    that atom at each position of ``c`` (``-1``: not in that atom)."""
    r = self.find(c)
    n = self.size[r]
    st = self._struct.get(r)
    if st is None:
      return [(r, np.arange(n))]
    out: dict[int, np.ndarray] = {}
    if st[0] == 'cat':
      off = 0
      for p in st[1]:
        s = self.size[self.find(p)]
        for atom, idx in self.layout(p):
          full = out.setdefault(atom, np.full(n, -1))
          full[off:off + s] = np.where(idx >= 0, idx, full[off:off + s])
        off += s
      return list(out.items())
    sizes = [self.size[self.find(p)] for p in st[1]]
    entries = []
    for k, p in enumerate(st[1]):
      for atom, idx in self.layout(p):
        shape = [1] * len(sizes)
        shape[k] = sizes[k]
        entries.append((atom, np.broadcast_to(idx.reshape(shape),
                                              sizes).reshape(-1)))
    atoms = [a for a, _ in entries]
    if len(set(atoms)) != len(atoms):
      for a in atoms:
        self.freeze(a, 'an axis that is an outer product of a space with '
                    'itself')
    return entries

  def reasons(self, c: int) -> list[str]:
    """Why ``c`` cannot be pruned: its own marks and those of every space
    that contains it."""
    return self._collect(c, self._reasons)

  def hazards(self, c: int) -> list[str]:
    return self._collect(c, self._hazards)

  def _collect(self, c: int, table: dict[int, list[str]]) -> list[str]:
    out, seen, todo = [], set(), [self.find(c)]
    while todo:
      r = self.find(todo.pop())
      if r in seen:
        continue
      seen.add(r)
      out += [m for m in table.get(r, []) if m not in out]
      todo += list(self._up.get(r, ()))
    return out
