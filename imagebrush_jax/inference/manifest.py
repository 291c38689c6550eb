"""The batch-inference manifest: JSON lines, one edit each.

    {"examples": [{"before": "a.png", "after": "b.png"}], "query": "q.png",
     "output": "name.png", "box": [x0, y0, x1, y1]}

Image paths are relative to the manifest's folder (absolute paths are kept); `output` is
relative to the output folder and may not leave it; `box` is optional, in the query's pixels
(a region edit: only the box changes, see inference/regions.py; example pairs carry no box).
Blank lines are ignored (line numbers still count them).

Several processes (`infer --manifest` under a launcher) share a manifest by its line numbers:
line N belongs to process (N - 1) % process_count (process_of_line), whatever its content, so
the split is fixed by the file alone, the same in a rerun, and independent of which rows fail.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Iterator

from imagebrush_jax.infra import files


class RowError(ValueError):
  """A manifest row that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Row:
  line: int  # 1-based line number in the manifest
  examples: tuple[tuple[str, str], ...]  # (before, after) paths
  query: str
  output: str  # absolute output path
  box: tuple[float, ...] | None  # query pixels, validated once the query's size is known


def _path(value, base: str, what: str) -> str:
  if not isinstance(value, str) or not value:
    raise RowError(f"{what} must be a non-empty path string, got {value!r}")
  try:
    return files.join(base, value)
  except ValueError as e:  # a relative path that climbs out of the manifest's bucket
    raise RowError(f"{what}: {e}") from e


def parse_row(text: str, line: int, *, base_dir: str, output_dir: str) -> Row:
  """One manifest line -> Row; raises RowError naming the problem."""
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise RowError(f"bad JSON: {e}") from e
  if not isinstance(obj, dict):
    raise RowError(f"a row must be a JSON object, got {type(obj).__name__}")
  unknown = sorted(set(obj) - {"examples", "query", "output", "box"})
  if unknown:
    raise RowError(f"unknown keys {unknown}; a row has examples, query, output and box")
  for key in ("examples", "query", "output"):
    if key not in obj:
      raise RowError(f"missing key {key!r}")
  examples = obj["examples"]
  if not isinstance(examples, list) or not examples:
    raise RowError(f"'examples' must be a non-empty list of {{before, after}} objects, "
                   f"got {examples!r}")
  pairs = []
  for k, ex in enumerate(examples):
    if not isinstance(ex, dict) or set(ex) != {"before", "after"}:
      raise RowError(f"examples[{k}] must be an object with exactly 'before' and 'after', "
                     f"got {ex!r}")
    pairs.append((_path(ex["before"], base_dir, f"examples[{k}].before"),
                  _path(ex["after"], base_dir, f"examples[{k}].after")))
  query = _path(obj["query"], base_dir, "query")
  out = obj["output"]
  if not isinstance(out, str) or not out or files.is_absolute(out):
    raise RowError(f"'output' must be a relative file name in the output folder, got {out!r}")
  out_norm = os.path.normpath(out)
  if out_norm.startswith(os.pardir):
    raise RowError(f"'output' {out!r} leaves the output folder")
  if not out_norm.lower().endswith(".png"):
    raise RowError(f"'output' {out!r} must end in .png (outputs are written as PNG)")
  box = obj.get("box")
  if box is not None:
    if (not isinstance(box, list) or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
      raise RowError(f"'box' must be [x0, y0, x1, y1] numbers in the query's pixels, got {box!r}")
    box = tuple(float(v) for v in box)
  return Row(line=line, examples=tuple(pairs), query=query,
             output=files.join(files.absolute(output_dir), out_norm), box=box)


def process_of_line(line: int, process_count: int) -> int:
  """The process (of `process_count`) that edits manifest line `line` (1-based): round robin."""
  return (int(line) - 1) % int(process_count)


def read_manifest(path: str, output_dir: str, *, process_index: int = 0,
                  process_count: int = 1) -> Iterator[Row | tuple[int, str]]:
  """Rows in file order; a bad row yields (line, error message) instead of a Row.

  Two rows writing the same output: the later one is an error. With `process_count` > 1, only
  the lines of process `process_index` (process_of_line) are yielded; every process reads the
  whole file, so the duplicate check sees every row.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  for item in _read_all(path, output_dir):
    line = item.line if isinstance(item, Row) else item[0]
    if process_of_line(line, process_count) == process_index:
      yield item


def _read_all(path: str, output_dir: str) -> Iterator[Row | tuple[int, str]]:
  base_dir = files.parent(path)
  seen: dict[str, int] = {}
  content = files.read_bytes(path).decode("utf-8", errors="replace")
  for line, text in enumerate(io.StringIO(content, newline=None), start=1):  # as text mode reads
    if not text.strip():
      continue
    try:
      row = parse_row(text, line, base_dir=base_dir, output_dir=output_dir)
    except RowError as e:
      yield (line, str(e))
      continue
    if row.output in seen:
      yield (line, f"output {row.output} is already written by line {seen[row.output]}")
      continue
    seen[row.output] = line
    yield row
