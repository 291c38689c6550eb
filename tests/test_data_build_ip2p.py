"""InstructPix2Pix readers on small files written in both published layouts: parquet shards
with the Hugging Face schema metadata (written by pyarrow) and prompt folders with JPEGs."""
import json

import pyarrow.parquet as pq
import pytest

from imagebrush_jax.data.prepare import ip2p
from published_data import jpeg as _jpeg
from published_data import write_parquet
from published_data import write_prompt_folders

# (edit_prompt, has images): rows 0-2 in row group 0, rows 3-5 in row group 1.
ROWS = [("Make it snowy.", True), ("make it  SNOWY", True), ("Turn the sky red", True),
        ("a lone instruction", True), ("turn the sky red!", False), (None, True)]


def _write_parquet(path, before_column="original_image"):
  return write_parquet(path, [(text, _jpeg(2 * i) if ok else None, _jpeg(2 * i + 1))
                              for i, (text, ok) in enumerate(ROWS)], before_column=before_column)


def test_instructions_normalise_case_spaces_and_final_punctuation():
  assert ip2p.normalise_instruction("  Make it  SNOWY!! ") == "make it snowy"
  assert ip2p.normalise_instruction("Turn the sky red.") == "turn the sky red"
  assert ip2p.normalise_instruction("add a hat, please") == "add a hat, please"
  assert ip2p.normalise_instruction(" ?! ") == ""


def test_parquet_index_groups_instructions_and_skips_singletons(tmp_path):
  shard = str(_write_parquet(tmp_path / "train-00000-of-00001.parquet"))
  assert pq.ParquetFile(shard).num_row_groups == 2
  refs, skipped = ip2p.index(str(tmp_path))
  assert [r.item for r in refs] == [0, 1, 2, 3, 4]
  assert [s.where for s in skipped] == [f"{shard} row 5"]  # no instruction
  tasks, singletons = ip2p.group_by_task(refs)
  assert list(tasks) == ["make it snowy", "turn the sky red"]
  assert [r.item for r in tasks["make it snowy"]] == [0, 1]
  assert [r.item for r in tasks["turn the sky red"]] == [2, 4]
  assert [s.where for s in singletons] == [f"{shard} 3"]
  assert "a lone instruction" in singletons[0].reason
  assert tasks["turn the sky red"][1].pair_id == "train-00000-of-00001.parquet:4"


def test_parquet_rows_are_read_across_row_groups_with_missing_images_as_none(tmp_path):
  shard = str(_write_parquet(tmp_path / "a.parquet"))
  got = list(ip2p.read_parquet(shard, [4, 0, 2]))
  assert [row for row, _, _ in got] == [0, 2, 4]
  assert got[0][1] == _jpeg(0) and got[0][2] == _jpeg(1)
  assert got[1][1] == _jpeg(4) and got[1][2] == _jpeg(5)
  assert got[2][1] is None and got[2][2] == _jpeg(9)  # row 4 has no before image
  with pytest.raises(ValueError, match="has 6 rows, no row 9"):
    list(ip2p.read_parquet(shard, [9]))


def test_parquet_column_names_are_configurable_and_missing_ones_named(tmp_path):
  shard = str(_write_parquet(tmp_path / "small.parquet", before_column="input_image"))
  with pytest.raises(ValueError, match=r"small.parquet: no column 'original_image' \(it has "):
    ip2p.index_parquet(shard)
  columns = ip2p.Columns(before="input_image")
  refs, _ = ip2p.index_parquet(shard, columns)
  assert len(refs) == 5
  (row, before, _), = ip2p.read_parquet(shard, [1], columns)
  assert row == 1 and before == _jpeg(2)
  (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
  with pytest.raises(ValueError, match="broken.parquet: not a readable parquet file"):
    ip2p.index_parquet(str(tmp_path / "broken.parquet"))


def test_prompt_folders_are_indexed_from_seeds_json(tmp_path):
  folders = {"0001": ("Make it snowy", [11, 12]), "0002": ("make it snowy.", [13]),
             "0003": ("Add a moon", [14])}
  write_prompt_folders(tmp_path, folders)
  (tmp_path / "0004").mkdir()  # no prompt.json
  listing = [[name, seeds] for name, (_, seeds) in folders.items()] + [["0004", [15]], "junk"]
  (tmp_path / "seeds.json").write_text(json.dumps(listing))

  refs, skipped = ip2p.index(str(tmp_path))
  assert [(r.task, r.item) for r in refs] == [("make it snowy", "11"), ("make it snowy", "12"),
                                              ("make it snowy", "13"), ("add a moon", "14")]
  assert [s.where for s in skipped] == [str(tmp_path / "0004"), f"{tmp_path}/seeds.json entry 4"]
  tasks, singletons = ip2p.group_by_task(refs)
  assert list(tasks) == ["make it snowy"] and len(singletons) == 1
  assert ip2p.read_prompt_folder(refs[2].file, refs[2].item) == (_jpeg(13), _jpeg(113))
  assert refs[2].pair_id == "0002:13"
  with pytest.raises(FileNotFoundError, match="seeds.json not found"):
    ip2p.index_prompt_folders(str(tmp_path / "0001"))


def test_parquet_pair_ids_name_the_shard_by_its_path_under_the_input(tmp_path):
  # The published layout: equal shard names in train/ and test/ give distinct pair ids.
  for split in ("train", "test"):
    (tmp_path / split).mkdir()
    _write_parquet(tmp_path / split / "0000.parquet")
  refs, _ = ip2p.index(str(tmp_path))
  ids = [r.pair_id for r in refs]
  assert len(set(ids)) == len(ids) == 10
  assert ids[0] == "test/0000.parquet:0" and ids[5] == "train/0000.parquet:0"
  single, _ = ip2p.index(str(tmp_path / "train" / "0000.parquet"))  # a file as the input
  assert single[0].pair_id == "0000.parquet:0"


@pytest.mark.parametrize("name", ["../outside", "0001/../../outside", "/srv/outside",
                                  "gs://bucket/outside", "C:/outside", "\\\\host\\share"])
def test_seeds_json_entries_may_not_leave_the_input_folder(tmp_path, name):
  (tmp_path / "in").mkdir()
  write_prompt_folders(tmp_path / "in", {"0001": ("Make it snowy", [11, 12])})
  (tmp_path / "in" / "seeds.json").write_text(json.dumps([["0001", [11]], [name, [12]]]))
  with pytest.raises(ValueError, match=r"seeds.json entry 1: .* must be a path inside") as e:
    ip2p.index(str(tmp_path / "in"))
  assert "\n" not in str(e.value) and repr(name) in str(e.value)


@pytest.mark.parametrize("seed", ["../../x", "1/2", -3, 1.5, True])
def test_seeds_json_seeds_must_be_integers(tmp_path, seed):
  write_prompt_folders(tmp_path, {"0001": ("Make it snowy", [11, 12])})
  (tmp_path / "seeds.json").write_text(json.dumps([["0001", [11, seed]]]))
  with pytest.raises(ValueError, match=r"seeds.json entry 0: seed .* is not a non-negative"):
    ip2p.index(str(tmp_path))
