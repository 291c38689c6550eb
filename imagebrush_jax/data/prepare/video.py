"""Frame pairs from videos: clip files (decoded with PyAV) and DAVIS-style frame folders.

A task is one sequence (a clip, or a `JPEGImages/<resolution>/<sequence>/` folder of numbered
frames); its pairs are (frame t, frame t + gap) taken from non-overlapping windows
[t, t + gap], t = 0, gap + 1, 2 (gap + 1), ..., so no two pairs of a task share a frame and an
example never shows the query's frames. Frames are decoded as a stream: one window is held at a
time, whatever the clip's length.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Iterator

import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.data import image_decode

CLIP_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
DAVIS_FRAMES = "JPEGImages"


class VideoError(ValueError):
  """A clip or frame folder that cannot be decoded; the message names it."""


@dataclasses.dataclass(frozen=True)
class VideoSequence:
  """One sequence: a clip file, or a folder of frame images in name order."""
  name: str  # the task name: the clip's path under the input root, or the DAVIS sequence
  path: str  # the clip file or the frame folder
  frames: tuple[str, ...] = ()  # a frame folder's images; empty for a clip


def find_sequences(root: str, resolution: str | None = None) -> list[VideoSequence]:
  """The sequences under `root`, sorted by name.

  DAVIS layout (`root/JPEGImages/<resolution>/<sequence>/00000.jpg`): its sequences, at
  `resolution` (default: the only one there, else '480p'). Otherwise every clip file under
  `root`, searched recursively, named by its path under `root` (extension included, so that
  `clip.mp4` and `clip.webm` are two tasks). Hidden files (macOS `._*` resource forks, ...) and
  files of other kinds are skipped; a folder reached again through a symlink is read once.
  """
  davis = files.join(root, DAVIS_FRAMES)
  if files.isdir(davis):
    return _davis_sequences(davis, resolution)
  if not files.isdir(root):
    raise FileNotFoundError(f"--input {root} is not a folder of clips or a DAVIS folder")
  found = [VideoSequence(rel, files.join(root, rel)) for rel in _clips(root, "", set())]
  return sorted(found, key=lambda s: s.name)


def _visible(folder: str) -> list[str]:
  """The names in `folder` that are not hidden (dotfiles)."""
  return [n for n in files.listdir(folder) if not n.startswith(".")]


def _clips(root: str, prefix: str, seen: set[str]) -> list[str]:
  """Clip paths under root/prefix, relative to root; `seen` holds the real paths of the folders
  already listed, so a symlink loop is followed once."""
  folder = files.join(root, prefix) if prefix else root
  real = folder if files.is_remote(folder) else os.path.realpath(folder)
  if real in seen:
    return []
  seen.add(real)
  rels = []
  for name in _visible(folder):
    rel = posixpath.join(prefix, name) if prefix else name
    if files.isdir(files.join(root, rel)):
      rels += _clips(root, rel, seen)
    elif name.lower().endswith(CLIP_EXTENSIONS):
      rels.append(rel)
  return rels


def _davis_sequences(davis: str, resolution: str | None) -> list[VideoSequence]:
  resolutions = [n for n in _visible(davis) if files.isdir(files.join(davis, n))]
  if resolution is None:
    resolution = resolutions[0] if len(resolutions) == 1 else "480p"
  if resolution not in resolutions:
    raise FileNotFoundError(f"{davis} has no {resolution!r} frames (it has "
                            f"{', '.join(resolutions) or 'none'})")
  folder = files.join(davis, resolution)
  sequences = []
  for name in _visible(folder):
    path = files.join(folder, name)
    if not files.isdir(path):
      continue
    frames = tuple(files.join(path, f) for f in _visible(path)
                   if f.lower().endswith(FRAME_EXTENSIONS))
    sequences.append(VideoSequence(name, path, frames))
  return sequences


def pair_windows(num_frames: int, gap: int) -> list[tuple[int, int]]:
  """(t, t + gap) for the non-overlapping windows of a sequence of `num_frames` frames."""
  if gap < 1:
    raise ValueError(f"the frame gap must be at least 1, got {gap}")
  return [(t, t + gap) for t in range(0, num_frames - gap, gap + 1)]


def _frames(seq: VideoSequence) -> Iterator[np.ndarray]:
  """The sequence's frames as uint8 RGB [H, W, 3], decoded one at a time."""
  if seq.frames:
    for path in seq.frames:
      try:
        frame = image_decode.load_rgb(path)
      except image_decode.ImageLoadError as e:
        raise VideoError(f"{path}: cannot decode frame: {' '.join(str(e).split())}") from e
      yield frame
    return
  import av  # pylint: disable=g-import-not-at-top
  try:
    with files.open_read(seq.path) as f, av.open(f) as container:
      if not container.streams.video:
        raise VideoError(f"{seq.path}: no video stream")
      for frame in container.decode(video=0):
        yield frame.to_ndarray(format="rgb24")
  except VideoError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # av.error.* and OSError
    raise VideoError(f"{seq.path}: cannot decode: {type(e).__name__}: "
                     f"{' '.join(str(e).split())}") from e


def read_pairs(seq: VideoSequence, gap: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
  """(t, t + gap, frame t, frame t + gap) of each window, in order. Raises VideoError when the
  sequence cannot be decoded (the pairs already yielded should then be dropped with it)."""
  if gap < 1:
    raise ValueError(f"the frame gap must be at least 1, got {gap}")
  start = None
  for t, frame in enumerate(_frames(seq)):
    offset = t % (gap + 1)
    if offset == 0:
      start = frame
    elif offset == gap:
      yield t - gap, t, start, frame
