"""How two {array name: shape} maps differ, as readable lines for an error message.

Shared by the checkpoint loader (checkpoint vs config) and the weight-file loader (file vs model).
"""
from __future__ import annotations

from typing import Any, Mapping


def describe(have: Mapping[str, Any], want: Mapping[str, Any], titles: tuple[str, str, str],
             limit: int) -> str:
  """Lines listing names only in `want`, only in `have`, and in both with another shape.

  `titles` name those three groups; shapes print as given; at most `limit` names per group.
  Returns '' when the maps agree.
  """
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  reshaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])
  lines = []
  for title, keys, fmt in (
      (titles[0], missing, lambda k: f"{k} {want[k]}"),
      (titles[1], extra, lambda k: f"{k} {have[k]}"),
      (titles[2], reshaped, lambda k: f"{k} {have[k]} vs {want[k]}")):
    if keys:
      lines.append(f"  {len(keys)} {title}:")
      lines.extend(f"    {fmt(k)}" for k in keys[:limit])
      if len(keys) > limit:
        lines.append(f"    ... and {len(keys) - limit} more")
  return "\n".join(lines)
