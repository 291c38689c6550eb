"""Inference CLI: single and manifest edits on a tiny trained checkpoint, bad rows, reruns,
odd image modes."""
import dataclasses
import json
import os
import warnings

import jax
import numpy as np
from PIL import Image
import pytest

from imagebrush_jax import infer
from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.inference import run_loading
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib

from _tiny_run import tiny_workdir  # pylint: disable=g-bad-import-order


@pytest.fixture(scope="module")
def workdir():
  return tiny_workdir()


def _rgb(rng, h, w):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  Image.fromarray(_rgb(rng, 20, 30)).save(d / "a.png")
  Image.fromarray(np.ascontiguousarray(_rgb(rng, 20, 30)[:, ::-1])).save(d / "b.png")
  Image.fromarray(rng.integers(0, 256, (13, 17, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
  Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8), "L").save(d / "gray.png")
  Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16)).save(d / "gray16.png")
  # A JPEG stored 6x4 whose EXIF orientation 6 (rotate 90 CW) displays it 4 wide, 6 tall.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(_rgb(rng, 4, 6)).save(d / "rotated.jpg", exif=exif.tobytes())
  (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  return d


# ---------------------------------------------------------------------------- image loading


def test_load_rgb_modes(image_dir):
  assert images.load_rgb(str(image_dir / "rgba.png")).shape == (13, 17, 3)
  gray = images.load_rgb(str(image_dir / "gray.png"))
  assert gray.shape == (9, 11, 3) and gray.dtype == np.uint8
  assert np.array_equal(gray[..., 0], gray[..., 2])
  g16 = images.load_rgb(str(image_dir / "gray16.png"))
  raw = np.asarray(Image.open(image_dir / "gray16.png")).astype(np.float64)
  assert g16.dtype == np.uint8 and g16.shape == (10, 12, 3)
  np.testing.assert_allclose(g16[..., 0], np.round(raw / 257), atol=1)
  assert images.load_rgb(str(image_dir / "rotated.jpg")).shape == (6, 4, 3)  # EXIF applied
  with pytest.raises(images.ImageLoadError, match="corrupt.png"):
    images.load_rgb(str(image_dir / "corrupt.png"))
  with pytest.raises(images.ImageLoadError, match="not found"):
    images.load_rgb(str(image_dir / "missing.png"))


def test_load_rgb_turns_every_decoding_failure_into_an_error_naming_the_file(
    image_dir, tmp_path, monkeypatch):
  png = (image_dir / "a.png").read_bytes()
  (tmp_path / "truncated.png").write_bytes(png[:len(png) // 2])
  (tmp_path / "text.png").write_text("hello")
  (tmp_path / "folder.png").mkdir()
  for name in ("truncated.png", "text.png", "folder.png"):
    with pytest.raises(images.ImageLoadError, match=name):
      images.load_rgb(str(tmp_path / name))
  # a.png has 600 pixels: a bomb above twice the limit, a warning above the limit.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)
  with pytest.raises(images.ImageLoadError, match="a.png.*too large"):
    images.load_rgb(str(image_dir / "a.png"))
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    with pytest.raises(images.ImageLoadError, match="a.png.*too large"):
      images.load_rgb(str(image_dir / "a.png"))


def test_rgba_composited_over_white(tmp_path):
  Image.new("RGBA", (3, 3), (10, 20, 30, 0)).save(tmp_path / "t.png")
  assert np.all(images.load_rgb(str(tmp_path / "t.png")) == 255)


def test_normalize_box():
  np.testing.assert_allclose(images.normalize_box([0, 5, 10, 20], 20, 20), [0, .25, .5, 1])
  for bad in ([5, 0, 5, 10], [0, 0, 21, 10], [-1, 0, 4, 4], [0, 0, 1], ["a", 0, 1, 1]):
    with pytest.raises(ValueError, match="box"):
      images.normalize_box(bad, 20, 20)


def test_parse_row_errors(tmp_path):
  kw = dict(base_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
  good = {"examples": [{"before": "a.png", "after": "b.png"}], "query": "q.png",
          "output": "x.png", "box": [0, 0, 4, 4]}
  row = manifest_lib.parse_row(json.dumps(good), 3, **kw)
  assert row.query == str(tmp_path / "q.png") and row.box == (0, 0, 4, 4) and row.line == 3
  for bad, match in (("{", "bad JSON"), ("[]", "JSON object"),
                     (dict(good, examples=[]), "examples"), (dict(good, output="../x.png"),
                                                             "leaves"),
                     (dict(good, output="x.jpg"), ".png"), (dict(good, box=[1, 2]), "box"),
                     ({k: v for k, v in good.items() if k != "query"}, "query")):
    text = bad if isinstance(bad, str) else json.dumps(bad)
    with pytest.raises(manifest_lib.RowError, match=match):
      manifest_lib.parse_row(text, 1, **kw)


# ---------------------------------------------------------------------------- end to end


def test_single_edit_keeps_query_size(workdir, image_dir, tmp_path):
  out = tmp_path / "out.png"
  rc = infer.main(["--workdir", workdir, "--before", str(image_dir / "a.png"),
                   "--after", str(image_dir / "b.png"), "--query", str(image_dir / "rotated.jpg"),
                   "--output", str(out), "--box", "0,1,3,5", "--steps", "2", "--seed", "1"])
  assert rc == 0
  with Image.open(out) as img:
    assert img.size == (4, 6) and img.mode == "RGB"
  # A box outside the query is a clear error and writes nothing.
  bad = tmp_path / "bad.png"
  rc = infer.main(["--workdir", workdir, "--before", str(image_dir / "a.png"),
                   "--after", str(image_dir / "b.png"), "--query", str(image_dir / "gray.png"),
                   "--output", str(bad), "--box", "0,0,50,5", "--steps", "2"])
  assert rc == 2 and not bad.exists()


def _error_line(capsys) -> str:
  """The one stderr line an input or config error prints."""
  lines = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("loaded ")]
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


def test_single_edit_needs_the_trained_number_of_pairs(workdir, image_dir, tmp_path, capsys):
  a, b = str(image_dir / "a.png"), str(image_dir / "b.png")
  rc = infer.main(["--workdir", workdir, "--before", a, "--after", b, "--before", a,
                   "--after", b, "--query", a, "--output", str(tmp_path / "o.png")])
  assert rc == 2 and "num_examples" in _error_line(capsys)


def test_cli_input_errors_are_one_line_and_exit_2(workdir, image_dir, tmp_path, capsys,
                                                  monkeypatch):
  a, b = str(image_dir / "a.png"), str(image_dir / "b.png")
  out = tmp_path / "o.png"
  single = ["--before", a, "--after", b, "--output", str(out), "--steps", "2"]
  for query in ("corrupt.png", "missing.png"):
    rc = infer.main(["--workdir", workdir, "--query", str(image_dir / query)] + single)
    assert rc == 2 and query in _error_line(capsys) and not out.exists()
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)  # a.png (600 pixels) is now a bomb
  rc = infer.main(["--workdir", workdir, "--query", a] + single)
  assert rc == 2 and "a.png" in _error_line(capsys) and not out.exists()
  monkeypatch.undo()
  missing = str(tmp_path / "no_such_run")
  rc = infer.main(["--workdir", missing, "--query", a] + single)
  assert rc == 2 and missing in _error_line(capsys)
  (tmp_path / "empty_run").mkdir()
  rc = infer.main(["--workdir", str(tmp_path / "empty_run"), "--query", a] + single)
  assert rc == 2 and "empty_run" in _error_line(capsys)
  rc = infer.main(["--workdir", workdir, "--manifest", str(tmp_path / "rows.jsonl"),
                   "--output_dir", str(tmp_path / "out")])
  assert rc == 2 and "rows.jsonl" in _error_line(capsys)


@pytest.mark.parametrize("flags, message", [
    (["--seed", str(2**63)], "seed must be in [0, 2**63), got 9223372036854775808"),
    (["--seed", "-1"], "seed must be in [0, 2**63), got -1"),
    (["--guidance", "nan"], "guidance must be a finite number, got nan"),
    (["--guidance", "inf"], "guidance must be a finite number, got inf"),
    (["--eta", "nan"], "eta must be a finite number, got nan"),
    (["--steps", "0"], "steps must be between 1 and 1000 (the run's diffusion.num_timesteps), "
                       "got 0"),
    (["--steps", "1001"], "steps must be between 1 and 1000 (the run's "
                          "diffusion.num_timesteps), got 1001"),
])
@pytest.mark.parametrize("mode", ["single", "manifest"])
def test_cli_refuses_bad_sampler_settings_in_one_line(workdir, image_dir, tmp_path, capsys,
                                                      flags, message, mode):
  if mode == "single":
    out = tmp_path / "o.png"
    argv = ["--before", str(image_dir / "a.png"), "--after", str(image_dir / "b.png"),
            "--query", str(image_dir / "a.png"), "--output", str(out)]
  else:
    out = tmp_path / "out"
    _write_manifest(tmp_path / "rows.jsonl", [
        {"examples": [{"before": str(image_dir / "a.png"), "after": str(image_dir / "b.png")}],
         "query": str(image_dir / "a.png"), "output": "r1.png"}])
    argv = ["--manifest", str(tmp_path / "rows.jsonl"), "--output_dir", str(out)]
  rc = infer.main(["--workdir", workdir, *argv, *flags])
  assert rc == 2 and _error_line(capsys) == f"error: {message}" and not out.exists()


def _write_manifest(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_manifest_batches_errors_and_rerun(workdir, image_dir, tmp_path):
  ex = [{"before": "a.png", "after": "b.png"}]
  rows = [
      {"examples": ex, "query": "a.png", "output": "r1.png"},
      {"examples": ex, "query": "rgba.png", "output": "sub/r2.png", "box": [0, 0, 8, 8]},
      {"examples": ex, "query": "missing.png", "output": "r3.png"},  # line 3: missing file
      "{not json",  # line 4
      {"examples": ex, "query": "gray16.png", "output": "r5.png", "box": [0, 0, 99, 5]},  # box
      {"examples": ex, "query": "corrupt.png", "output": "r6.png"},  # line 6: corrupt
      {"examples": ex, "query": "gray.png", "output": "r7.png"},
      {"examples": ex, "query": "rotated.jpg", "output": "r8.png"},
      {"examples": ex, "query": "gray16.png", "output": "r9.png"},
      {"examples": ex, "query": "b.png", "output": "r10.png"},
      {"examples": ex, "query": "a.png", "output": "r11.png"},
  ]
  manifest = image_dir / "rows.jsonl"
  _write_manifest(manifest, rows)
  out = tmp_path / "out"

  # Through the library, to count compilations: 7 good rows at batch 4 = 2 batches, 1 compile.
  run = run_loading.load_run(workdir)
  editor = editor_lib.Editor(run, batch_size=4, num_steps=2)
  before = editor.compilations
  stats = batch_lib.edit_rows(editor, manifest_lib.read_manifest(str(manifest), str(out)),
                          str(out / "errors.jsonl"), log=lambda m: None)
  assert stats == {"done": 7, "skipped": 0, "failed": 4}
  assert editor.compilations - before == 1
  errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  assert [e["line"] for e in errors] == [3, 4, 5, 6]
  assert "missing.png" in errors[0]["error"] and "JSON" in errors[1]["error"]
  assert "box" in errors[2]["error"] and "corrupt.png" in errors[3]["error"]
  sizes = {"r1.png": (30, 20), "sub/r2.png": (17, 13), "r7.png": (11, 9), "r8.png": (4, 6),
           "r9.png": (12, 10)}
  for name, size in sizes.items():
    with Image.open(out / name) as img:
      assert img.size == size
  assert not any(p.name.startswith(".tmp") for p in out.rglob("*"))

  # The CLI: a rerun skips the finished rows, does the new one, reports the bad ones again.
  os.remove(out / "r1.png")
  mtime = os.path.getmtime(out / "r7.png")
  rc = infer.main(["--workdir", workdir, "--manifest", str(manifest), "--output_dir", str(out),
                   "--batch_size", "4", "--steps", "2"])
  assert rc == 1  # some rows failed
  assert (out / "r1.png").exists() and os.path.getmtime(out / "r7.png") == mtime
  assert len((out / "errors.jsonl").read_text().splitlines()) == 4
  summary = json.loads((out / "summary.json").read_text())
  assert summary.pop("seconds") >= 0
  assert summary == {"done": 1, "failed": 4, "skipped": 6, "processes": 1}

  # All good rows: exit status 0 and an empty error list.
  _write_manifest(manifest, [rows[0], rows[6]])
  rc = infer.main(["--workdir", workdir, "--manifest", str(manifest), "--output_dir",
                   str(tmp_path / "out2"), "--batch_size", "4", "--steps", "2"])
  assert rc == 0 and (tmp_path / "out2" / "errors.jsonl").read_text() == ""


def test_a_decompression_bomb_fails_its_row_only(workdir, image_dir, tmp_path, monkeypatch):
  Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "huge.png")
  ex = [{"before": str(image_dir / "a.png"), "after": str(image_dir / "b.png")}]
  manifest = tmp_path / "rows.jsonl"
  _write_manifest(manifest, [
      {"examples": ex, "query": str(image_dir / "a.png"), "output": "r1.png"},
      {"examples": ex, "query": "huge.png", "output": "r2.png"},  # 10,000 pixels: a bomb
      {"examples": [{"before": "huge.png", "after": str(image_dir / "b.png")}],
       "query": str(image_dir / "b.png"), "output": "r3.png"},  # a bomb among the examples
      {"examples": ex, "query": str(image_dir / "gray.png"), "output": "r4.png"},
  ])
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # bombs above 2,000 pixels
  out = tmp_path / "out"
  editor = editor_lib.Editor(run_loading.load_run(workdir), batch_size=4, num_steps=2)
  stats = batch_lib.edit_rows(editor, manifest_lib.read_manifest(str(manifest), str(out)),
                          str(out / "errors.jsonl"), log=lambda m: None)
  assert stats == {"done": 2, "skipped": 0, "failed": 2}
  errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  assert [e["line"] for e in errors] == [2, 3]
  assert all("huge.png" in e["error"] and "\n" not in e["error"] for e in errors)
  assert (out / "r1.png").exists() and (out / "r4.png").exists()


def test_cli_usage_errors(image_dir):
  with pytest.raises(SystemExit):
    infer.main(["--workdir", "x", "--before", "a", "--query", "q", "--output", "o"])
  with pytest.raises(SystemExit):
    infer.main(["--workdir", "x", "--manifest", "m.jsonl"])  # no --output_dir


# ---------------------------------------------------------------------------- export


def test_exported_file_edits_exactly_as_the_checkpoint_and_re_exports_byte_identical(
    workdir, image_dir, tmp_path):
  from imagebrush_jax import export  # pylint: disable=g-import-not-at-top
  model_file = tmp_path / "model.safetensors"
  assert export.main(["--workdir", workdir, "--output", str(model_file)]) == 0
  from_run, from_file = run_loading.load_run(workdir), run_loading.load_params_file(
      str(model_file))
  assert from_file.step == from_run.step and from_file.workdir == workdir
  assert from_file.config.to_dict() == from_run.config.to_dict()
  for a, b in zip(jax.tree.leaves(from_run.params), jax.tree.leaves(from_file.params)):
    np.testing.assert_array_equal(a, b)
  again = tmp_path / "again.safetensors"
  run_loading.save_params_file(from_file, str(again))
  assert again.read_bytes() == model_file.read_bytes()

  edit = ["--before", str(image_dir / "a.png"), "--after", str(image_dir / "b.png"),
          "--query", str(image_dir / "a.png"), "--steps", "2", "--seed", "3"]
  assert infer.main(["--workdir", workdir, "--output", str(tmp_path / "w.png"), *edit]) == 0
  assert infer.main(["--params", str(model_file), "--output", str(tmp_path / "p.png"),
                     *edit]) == 0
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w.png")),
                                np.asarray(Image.open(tmp_path / "p.png")))


def test_export_errors_name_the_file(workdir, tmp_path, capsys):
  from imagebrush_jax.converters import params_file  # pylint: disable=g-import-not-at-top
  vae_like = tmp_path / "vae.safetensors"
  params_file.save(str(vae_like), {"w": np.zeros(2, np.float32)}, kind="autoencoder_kl",
                   architecture={})
  assert infer.main(["--params", str(vae_like), "--before", "a.png", "--after", "b.png",
                     "--query", "q.png", "--output", str(tmp_path / "o.png")]) == 2
  assert f"{vae_like}: holds a 'autoencoder_kl' model, not a 'imagebrush' one" in (
      capsys.readouterr().err)
  with pytest.raises(ValueError, match="--step and --raw_params choose a checkpoint"):
    run_loading.load(params=str(vae_like), step=2)
  model_file = tmp_path / "model.safetensors"
  run = run_loading.load_run(workdir)
  broken = dict(run.params)
  broken.pop(sorted(broken)[0])  # a missing key
  run_loading.save_params_file(dataclasses.replace(run, params=broken), str(model_file))
  with pytest.raises(Exception, match=f"parameter file {model_file} does not fit its own config"):
    run_loading.load_params_file(str(model_file))
