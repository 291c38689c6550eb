"""Video frame pairs on short clips encoded with PyAV, a DAVIS frame folder and a broken clip."""
import numpy as np
import pytest

from imagebrush_jax.data.prepare import video
from published_data import frame as _frame
from published_data import write_clip as _write_clip
from published_data import write_davis


def test_windows_do_not_overlap():
  assert video.pair_windows(10, 2) == [(0, 2), (3, 5), (6, 8)]
  assert video.pair_windows(3, 2) == [(0, 2)]
  assert video.pair_windows(2, 2) == []
  with pytest.raises(ValueError, match="at least 1"):
    video.pair_windows(10, 0)


def test_clips_are_found_recursively_and_decoded_into_frame_pairs(tmp_path):
  (tmp_path / "walk").mkdir()
  _write_clip(tmp_path / "walk" / "a.mp4", 9)
  _write_clip(tmp_path / "b.webm", 5, codec="libvpx")
  (tmp_path / "notes.txt").write_text("not a clip")
  sequences = video.find_sequences(str(tmp_path))
  assert [s.name for s in sequences] == ["b.webm", "walk/a.mp4"]
  pairs = list(video.read_pairs(sequences[1], gap=2))
  assert [(t, u) for t, u, _, _ in pairs] == video.pair_windows(9, 2) == [(0, 2), (3, 5), (6, 8)]
  for t, u, before, after in pairs:
    assert before.shape == after.shape == (32, 32, 3) and before.dtype == np.uint8
    np.testing.assert_allclose(before.reshape(-1, 3).mean(0), _frame(t)[0, 0], atol=6)
    np.testing.assert_allclose(after.reshape(-1, 3).mean(0), _frame(u)[0, 0], atol=6)
  assert [(t, u) for t, u, _, _ in video.read_pairs(sequences[0], gap=1)] == [(0, 1), (2, 3)]


def test_a_broken_clip_is_a_video_error_naming_it(tmp_path):
  (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
  (seq,) = video.find_sequences(str(tmp_path))
  with pytest.raises(video.VideoError, match="broken.mp4: cannot decode"):
    list(video.read_pairs(seq, gap=1))


def test_davis_frame_folders_are_sequences(tmp_path):
  write_davis(tmp_path, {"bear": 5, "car": 3})
  (tmp_path / "JPEGImages" / "480p" / "car" / "00001.jpg").write_bytes(b"not a jpeg")
  sequences = video.find_sequences(str(tmp_path))
  assert [(s.name, len(s.frames)) for s in sequences] == [("bear", 5), ("car", 3)]
  pairs = list(video.read_pairs(sequences[0], gap=1))
  assert [(t, u) for t, u, _, _ in pairs] == [(0, 1), (2, 3)]
  np.testing.assert_allclose(pairs[1][3].reshape(-1, 3).mean(0), _frame(3)[0, 0], atol=4)
  with pytest.raises(video.VideoError, match="00001.jpg: cannot decode frame"):
    list(video.read_pairs(sequences[1], gap=1))
  with pytest.raises(FileNotFoundError, match="no '1080p' frames"):
    video.find_sequences(str(tmp_path), resolution="1080p")


def test_clips_of_one_stem_are_distinct_tasks_and_hidden_files_and_loops_are_skipped(tmp_path):
  from imagebrush_jax.data.prepare import units  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.data.prepare import writer  # pylint: disable=g-import-not-at-top
  clips = tmp_path / "clips"
  (clips / "sub").mkdir(parents=True)
  _write_clip(clips / "clip.mp4", 4)
  _write_clip(clips / "clip.webm", 4, codec="libvpx")
  _write_clip(clips / "sub" / "a.mp4", 4)
  _write_clip(clips / "sub" / "a.MP4", 4)
  (clips / "._clip.mp4").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
  (clips / ".hidden").mkdir()
  _write_clip(clips / ".hidden" / "c.mp4", 4)
  (clips / "sub" / "loop").symlink_to(clips, target_is_directory=True)  # a symlink loop
  names = [s.name for s in video.find_sequences(str(clips))]
  assert names == ["clip.mp4", "clip.webm", "sub/a.MP4", "sub/a.mp4"]
  summary = writer.build(writer.BuildOptions(
      source="video", input=str(clips), output=str(tmp_path / "out"), tile_size=8,
      read=units.SourceOptions(frame_gap=1)))
  assert (summary["tasks"], summary["pairs"], summary["skipped"]) == (4, 8, 0)


def test_davis_listing_skips_hidden_and_non_image_files(tmp_path):
  write_davis(tmp_path, {"bear": 4})
  bear = tmp_path / "JPEGImages" / "480p" / "bear"
  (bear / "._00000.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
  (bear / "Thumbs.db").write_bytes(b"junk")
  (bear / ".DS_Store").write_bytes(b"junk")
  (tmp_path / "JPEGImages" / "480p" / "._bear").write_bytes(b"junk")
  (tmp_path / "JPEGImages" / "._480p").write_bytes(b"junk")
  (seq,) = video.find_sequences(str(tmp_path))
  assert [p.rsplit("/", 1)[1] for p in seq.frames] == [f"{t:05d}.jpg" for t in range(4)]
  assert len(list(video.read_pairs(seq, gap=1))) == 2
