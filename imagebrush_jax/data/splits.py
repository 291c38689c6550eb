"""Train / held-out split of stored pairs, per task, by a hash of each pair's id.

Pair `p` of task `t` is held out when blake2b("t/p") / 2**64 < fraction; a task always holds out
at least `min_pairs` (enough for one evaluation grid: config.data.num_examples + 1), taking the
pairs with the smallest hashes. The split depends only on the ids, so it is the same on every
host and run, and adding pairs to a task never moves an existing pair into the other part
(unless the task's minimum takes it). Evaluation grids are made of held-out pairs alone: no pair
of an evaluation grid, example or query, is ever trained on.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

PARTS = ("train", "heldout")


def pair_hash(task: str, pair_id: str) -> float:
  """A uniform number in [0, 1) fixed by (task, pair_id)."""
  digest = hashlib.blake2b(f"{task}/{pair_id}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2.0**64


def split_task(task: str, indices: Sequence[int], pair_ids: Sequence[str], *, fraction: float,
               min_pairs: int) -> tuple[list[int], list[int]]:
  """(train indices, held-out indices) of one task's pairs, each in the original order."""
  if len(indices) != len(pair_ids):
    raise ValueError(f"task {task!r}: {len(indices)} pairs but {len(pair_ids)} ids")
  hashes = [pair_hash(task, p) for p in pair_ids]
  order = sorted(range(len(indices)), key=lambda i: (hashes[i], pair_ids[i]))
  num_heldout = max(min_pairs, sum(h < fraction for h in hashes))
  heldout = set(order[:num_heldout])
  train = [indices[i] for i in range(len(indices)) if i not in heldout]
  held = [indices[i] for i in range(len(indices)) if i in heldout]
  if len(train) < min_pairs:
    raise ValueError(
        f"task {task!r} has {len(indices)} pairs: config.data.eval_fraction = {fraction} holds "
        f"out {len(held)} (at least config.data.num_examples + 1 = {min_pairs}) and leaves "
        f"{len(train)} for training, fewer than {min_pairs}; add pairs to it, or set "
        f"config.data.eval_fraction = 0 to evaluate on training pairs")
  return train, held


class SplitSource:
  """One part ('train' or 'heldout') of a pair source; same indices, fewer pairs per task.

  Wraps any source with tasks, __len__, __getitem__, pair_indices(task) and pair_id(index).
  Each task is split when first asked for, so tasks a run never uses are never hashed.
  """

  def __init__(self, source, *, fraction: float, part: str, min_pairs: int):
    if part not in PARTS:
      raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    if not 0.0 < fraction < 1.0:
      raise ValueError(f"config.data.eval_fraction must be in (0, 1) to split, got {fraction}")
    self.source, self.fraction, self.part, self.min_pairs = source, fraction, part, min_pairs
    self.tasks = source.tasks
    self._parts: dict[str, tuple[list[int], list[int]]] = {}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    return self.source[index]

  def moments(self, index: int):
    return self.source.moments(index)

  def pair_id(self, index: int) -> str:
    return self.source.pair_id(index)

  def parts(self, task: str) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of `task`."""
    if task not in self._parts:
      indices = list(self.source.pair_indices(task))
      self._parts[task] = split_task(task, indices, [self.source.pair_id(i) for i in indices],
                                     fraction=self.fraction, min_pairs=self.min_pairs)
    return self._parts[task]

  def pair_indices(self, task: str) -> Sequence[int]:
    train, heldout = self.parts(task)
    return train if self.part == "train" else heldout
