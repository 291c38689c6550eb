"""Small files in the published layouts of edit data sets, for the data.build tests:
InstructPix2Pix parquet shards (Hugging Face schema metadata, written by pyarrow), prompt
folders, clips encoded with PyAV and DAVIS frame folders."""
import io
import json

import numpy as np
from PIL import Image


HF_FEATURES = {"original_prompt": {"dtype": "string", "_type": "Value"},
               "original_image": {"_type": "Image"},
               "edit_prompt": {"dtype": "string", "_type": "Value"},
               "edited_prompt": {"dtype": "string", "_type": "Value"},
               "edited_image": {"_type": "Image"}}


def jpeg(seed: int, size: tuple[int, int] = (12, 16)) -> bytes:
  """JPEG bytes of random pixels fixed by `seed`."""
  pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


def write_parquet(path, rows, *, before_column: str = "original_image",
                  row_group_size: int = 3):
  """An instructpix2pix-clip-filtered shard of `rows` = [(edit_prompt, before bytes or None,
  after bytes)]; returns `path`."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  table = pa.table({
      "original_prompt": [f"photo {i}" for i in range(len(rows))],
      before_column: pa.array([None if b is None else {"bytes": b, "path": f"{i}_0.jpg"}
                               for i, (_, b, _) in enumerate(rows)], image),
      "edit_prompt": [text for text, _, _ in rows],
      "edited_prompt": [f"edited photo {i}" for i in range(len(rows))],
      "edited_image": pa.array([{"bytes": a, "path": f"{i}_1.jpg"}
                                for i, (_, _, a) in enumerate(rows)], image),
  })
  table = table.replace_schema_metadata(
      {"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})
  pq.write_table(table, path, row_group_size=row_group_size)
  return path


def write_prompt_folders(root, folders: dict[str, tuple[str, list[int]]]) -> None:
  """The original generated layout: seeds.json, <name>/prompt.json, <name>/<seed>_{0,1}.jpg."""
  for name, (edit, seeds) in folders.items():
    (root / name).mkdir()
    (root / name / "prompt.json").write_text(
        json.dumps({"input": "a photo", "edit": edit, "output": "an edited photo"}))
    for seed in seeds:
      (root / name / f"{seed}_0.jpg").write_bytes(jpeg(seed))
      (root / name / f"{seed}_1.jpg").write_bytes(jpeg(seed + 100))
  (root / "seeds.json").write_text(json.dumps([[n, s] for n, (_, s) in folders.items()]))


def frame(t: int) -> np.ndarray:
  """A 32x32 frame whose flat colour encodes t (survives lossy coding to a few levels)."""
  return np.full((32, 32, 3), (20 * t, 255 - 20 * t, 128), np.uint8)


def write_clip(path, num_frames: int, codec: str = "mpeg4") -> None:
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for t in range(num_frames):
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_davis(root, sequences: dict[str, int], resolution: str = "480p") -> None:
  """root/JPEGImages/<resolution>/<sequence>/00000.jpg ..."""
  for name, count in sequences.items():
    folder = root / "JPEGImages" / resolution / name
    folder.mkdir(parents=True)
    for t in range(count):
      Image.fromarray(frame(t)).save(folder / f"{t:05d}.jpg", quality=95)
