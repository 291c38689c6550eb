"""InstructPix2Pix pairs grouped by their edit instruction, from either published layout.

* Hugging Face parquet shards (`timbrooks/instructpix2pix-clip-filtered` and its smaller
  variants): columns `original_image` / `edited_image` (struct {bytes, path}) and
  `edit_prompt`; the names are configurable (`Columns`), e.g. `input_image` in smaller variants.
* The original generated folders: `seeds.json` (a list of [name, [seed, ...]]),
  `<name>/prompt.json` ({"input", "edit", "output"}), `<name>/<seed>_0.jpg` (before) and
  `<name>/<seed>_1.jpg` (after).

Reading is two-phase so that hundreds of thousands of pairs never sit in memory: `index_*`
reads only the instructions (one parquet column, or the prompt.json files) and returns a PairRef
per pair; `read_*` then returns the encoded image bytes of the refs of one input file, one
parquet row group at a time. A task is one normalised instruction (`normalise_instruction`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import posixpath
from typing import Iterator, Sequence

from imagebrush_jax.infra import files

SEEDS_FILE = "seeds.json"
PROMPT_FILE = "prompt.json"
_FINAL_PUNCTUATION = ".!?;:,"


def normalise_instruction(text: str) -> str:
  """The task name of an instruction: lower case, single spaces, no final punctuation."""
  return " ".join(text.split()).lower().rstrip(_FINAL_PUNCTUATION + " ")


@dataclasses.dataclass(frozen=True)
class Columns:
  """Parquet column names: the before and after image structs and the instruction."""
  before: str = "original_image"
  after: str = "edited_image"
  instruction: str = "edit_prompt"


@dataclasses.dataclass(frozen=True)
class PairRef:
  """Where one pair is: a parquet shard and its row, or a prompt folder and its seed."""
  task: str  # the normalised instruction
  file: str  # the parquet shard, or the prompt folder
  item: int | str  # the row in the shard, or the seed
  name: str  # the shard or folder relative to the input root: unique within one input

  @property
  def pair_id(self) -> str:
    return f"{self.name}:{self.item}"


def relative_name(root: str, path: str) -> str:
  """`path` relative to the input `root`, '/'-separated (a root that is the file itself: its
  base name), so pair ids are unique across shards of equal names in different folders."""
  root, path = files.absolute(root).rstrip("/"), files.absolute(path)
  if path == root:
    return posixpath.basename(path)
  if not path.startswith(root + "/"):
    raise ValueError(f"{path} is not under the input {root}")
  return path[len(root) + 1:]


@dataclasses.dataclass(frozen=True)
class Skip:
  """An input that gives no pair, and why (listed in the build's errors.jsonl)."""
  where: str  # file, and row or seed
  reason: str


# ---------------------------------------------------------------------------- parquet


class UnreadableShard(ValueError):
  """A parquet shard that cannot be opened or whose data cannot be read; names the file."""


def _parquet_file(path: str):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    return pq.ParquetFile(files.open_read(path))
  except Exception as e:  # pylint: disable=broad-except  # pyarrow raises several types
    raise UnreadableShard(f"{path}: not a readable parquet file: "
                          f"{' '.join(str(e).split())}") from e


def _read_group(pf, path: str, group: int, columns: Sequence[str]):
  try:
    return pf.read_row_group(group, columns=list(columns))
  except Exception as e:  # pylint: disable=broad-except  # pyarrow raises several types
    raise UnreadableShard(f"{path}: row group {group} cannot be read: "
                          f"{' '.join(str(e).split())}") from e


def _check_columns(path: str, names: Sequence[str], wanted: Sequence[str]) -> None:
  missing = [c for c in wanted if c not in names]
  if missing:
    raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} (it has "
                     f"{', '.join(names)}); name the columns with --before_column / "
                     f"--after_column / --instruction_column")


def parquet_shards(root: str) -> list[str]:
  """The .parquet files of a file or a folder (searched recursively), sorted."""
  if files.isfile(root):
    return [root]
  if not files.isdir(root):
    raise FileNotFoundError(f"--input {root} does not exist")
  found = []
  for name in files.listdir(root):
    path = files.join(root, name)
    if name.endswith(".parquet"):
      found.append(path)
    elif files.isdir(path):
      found += parquet_shards(path)
  return sorted(found)


def index_parquet(path: str, columns: Columns = Columns(), root: str | None = None
                  ) -> tuple[list[PairRef], list[Skip]]:
  """A PairRef per row with an instruction, reading only the instruction column; pair ids
  name the shard by its path under the input `root` (default: the shard itself)."""
  name = relative_name(root or path, path)
  pf = _parquet_file(path)
  _check_columns(path, pf.schema_arrow.names, (columns.before, columns.after,
                                               columns.instruction))
  refs, skips, row = [], [], 0
  for group in range(pf.num_row_groups):
    table = _read_group(pf, path, group, [columns.instruction])
    for text in table.column(0).to_pylist():
      task = normalise_instruction(text) if isinstance(text, str) else ""
      if task:
        refs.append(PairRef(task, path, row, name))
      else:
        skips.append(Skip(f"{path} row {row}", f"no instruction in {columns.instruction!r}"))
      row += 1
  return refs, skips


def _image_bytes(value) -> bytes | None:
  """The encoded image of a {bytes, path} struct (or plain binary) cell; None when absent."""
  if isinstance(value, dict):
    value = value.get("bytes")
  return value if isinstance(value, bytes) and value else None


def read_parquet(path: str, rows: Sequence[int], columns: Columns = Columns()
                 ) -> Iterator[tuple[int, bytes | None, bytes | None]]:
  """(row, before bytes, after bytes) of the given rows of one shard, in row order, decoding
  one row group at a time (memory stays bounded whatever the shard size); None where a cell
  holds no image."""
  pf = _parquet_file(path)
  _check_columns(path, pf.schema_arrow.names, (columns.before, columns.after))
  wanted = sorted(set(int(r) for r in rows))
  start, k = 0, 0
  for group in range(pf.num_row_groups):
    stop = start + pf.metadata.row_group(group).num_rows
    mine = []
    while k < len(wanted) and wanted[k] < stop:
      mine.append(wanted[k])
      k += 1
    if mine:
      table = _read_group(pf, path, group, [columns.before, columns.after])
      before, after = table.column(0), table.column(1)
      for row in mine:
        yield (row, _image_bytes(before[row - start].as_py()),
               _image_bytes(after[row - start].as_py()))
    start = stop
  if k < len(wanted):
    raise ValueError(f"{path}: has {start} rows, no row {wanted[k]}")


# ---------------------------------------------------------------------------- prompt folders


def index_prompt_folders(root: str) -> tuple[list[PairRef], list[Skip]]:
  """A PairRef per (folder, seed) listed in ROOT/seeds.json, with its folder's edit
  instruction; a folder without a readable prompt.json is skipped with all its seeds."""
  seeds_path = files.join(root, SEEDS_FILE)
  try:
    listing = json.loads(files.read_bytes(seeds_path))
  except FileNotFoundError:
    raise FileNotFoundError(f"{seeds_path} not found: an InstructPix2Pix folder has "
                            f"{SEEDS_FILE}, <name>/{PROMPT_FILE} and <name>/<seed>_0.jpg / "
                            f"<seed>_1.jpg") from None
  except ValueError as e:
    raise ValueError(f"{seeds_path}: not valid JSON: {e}") from e
  if not isinstance(listing, list):
    raise ValueError(f"{seeds_path}: expected a list of [name, [seed, ...]]")
  refs, skips = [], []
  for k, entry in enumerate(listing):
    if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
        or not isinstance(entry[1], list)):
      skips.append(Skip(f"{seeds_path} entry {k}", f"expected [name, [seed, ...]], got {entry!r}"))
      continue
    name, seeds = entry
    folder = files.join_inside(root, name, f"{seeds_path} entry {k}")
    bad = [seed for seed in seeds if not _is_seed(seed)]
    if bad:
      raise ValueError(f"{seeds_path} entry {k}: seed {bad[0]!r} is not a non-negative integer")
    try:
      prompt = files.read_json_object(files.join(folder, PROMPT_FILE))
      task = normalise_instruction(prompt.get("edit") or "")
      if not task:
        raise ValueError(f"no 'edit' instruction in {PROMPT_FILE}")
    except (ValueError, OSError) as e:
      skips.append(Skip(folder, " ".join(str(e).split())))
      continue
    refs += [PairRef(task, folder, str(seed), relative_name(root, folder)) for seed in seeds]
  return refs, skips


def _is_seed(value) -> bool:
  """A seed names files (<seed>_0.jpg): a non-negative integer, or a string of digits."""
  if isinstance(value, bool):
    return False
  return (isinstance(value, int) and value >= 0) or (isinstance(value, str) and value.isdigit()
                                                      and value.isascii())


def read_prompt_folder(folder: str, seed: str) -> tuple[bytes, bytes]:
  """The (before, after) JPEG bytes of a prompt folder's seed; OSError when one is missing."""
  return (files.read_bytes(files.join(folder, f"{seed}_0.jpg")),
          files.read_bytes(files.join(folder, f"{seed}_1.jpg")))


# ---------------------------------------------------------------------------- tasks


def group_by_task(refs: Sequence[PairRef]) -> tuple[dict[str, list[PairRef]], list[Skip]]:
  """Tasks (sorted by name) and their pairs (in input order). An instruction with fewer than
  two pairs cannot show an example and ask a query: its pair is skipped."""
  by_task: dict[str, list[PairRef]] = collections.defaultdict(list)
  for ref in refs:
    by_task[ref.task].append(ref)
  tasks, skips = {}, []
  for task in sorted(by_task):
    pairs = by_task[task]
    if len(pairs) < 2:
      skips += [Skip(f"{p.file} {p.item}", f"instruction {task!r} has no other pair")
                for p in pairs]
    else:
      tasks[task] = pairs
  return tasks, skips


def index(path: str, columns: Columns = Columns()) -> tuple[list[PairRef], list[Skip]]:
  """PairRefs of either layout under `path`: prompt folders when it holds seeds.json, else
  its parquet shards (one that cannot be read is skipped)."""
  if files.isdir(path) and files.exists(files.join(path, SEEDS_FILE)):
    return index_prompt_folders(path)
  refs, skips = [], []
  shards = parquet_shards(path)
  if not shards:
    raise FileNotFoundError(f"{path} holds neither {SEEDS_FILE} nor .parquet shards")
  for shard in shards:
    try:
      r, s = index_parquet(shard, columns, root=path)
    except UnreadableShard as e:  # a damaged download: skipped and listed, the rest is built
      r, s = [], [Skip(shard, str(e))]
    refs += r
    skips += s
  return refs, skips

