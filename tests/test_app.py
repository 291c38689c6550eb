"""The web editor: its edits equal infer's, its API endpoint, its errors and limits, and a real
browser (Debian's Chromium driven by Playwright) drawing a box, on the query as uploaded and
turned, and editing."""
import contextlib
import io
import math
import os
import re
import socket
import subprocess
import sys
import time

import gradio as gr
from gradio.data_classes import FileData
from gradio_image_annotation.image_annotator import AnnotatedImageData
import httpx
import numpy as np
from PIL import Image
import pytest

from imagebrush_jax import app as app_lib
from imagebrush_jax import infer
from imagebrush_jax.inference import run_loading
from imagebrush_jax.inference import gallery
from imagebrush_jax.inference import images
from imagebrush_jax.inference import service as service_lib
from imagebrush_jax.metrics import image_quality

from _tiny_run import tiny_workdir  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
# Known to keep Chromium quiet and working as root in a container without network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("app_inputs")
  rng = np.random.default_rng(0)
  out = {}
  for name, size in (("a", (30, 40)), ("b", (30, 40)), ("q", (120, 160))):
    out[name] = str(folder / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(out[name])
  out["bad"] = str(folder / "bad.png")
  with open(out["bad"], "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n truncated")
  out["folder"] = str(folder)
  return out


@pytest.fixture(scope="module")
def service():
  svc = service_lib.EditService(run_loading.load(tiny_workdir()))
  svc.warm_up()
  return svc


def _infer(files, tmp, box=None, seed=0, steps=None, guidance=None, query=None, flags=()):
  query = query or files["q"]
  out = os.path.join(tmp, f"infer_{os.path.basename(query)}_{box}_{seed}_{steps}_{guidance}"
                     f"{''.join(flags)}.png".replace(" ", ""))
  argv = ["--workdir", tiny_workdir(), "--before", files["a"], "--after", files["b"],
          "--query", query, "--output", out, "--seed", str(seed), *flags]
  if box is not None:
    argv += ["--box", ",".join(str(v) for v in box)]
  if steps is not None:
    argv += ["--steps", str(steps)]
  if guidance is not None:
    argv += ["--guidance", str(guidance)]
  assert infer.main(argv) == 0
  return np.asarray(Image.open(out))


def test_service_edits_exactly_as_infer(service, files, tmp_path):
  pairs = [(files["a"], files["b"])]
  for box, seed in ((None, 0), ((20, 10, 110, 90), 3)):
    edit = service.edit(pairs, files["q"], box, seed=seed)
    np.testing.assert_array_equal(edit.image, _infer(files, str(tmp_path), box, seed))
    assert edit.image.shape == (120, 160, 3)
    # The grid picture: example row and query row, each tile scaled up; the box drawn or not.
    tile = service.tile_size
    scale = -(-service_lib.PREVIEW_MIN_TILE // tile)
    assert edit.grid.shape == (2 * tile * scale, 2 * tile * scale, 3)
    drawn = np.all(edit.grid == service_lib.BOX_COLOUR, axis=-1).sum()
    assert (drawn > 0) == (box is not None)
  # Other settings per request, same sampler compilation for the same settings.
  compiled = service.editor.compilations
  other = service.edit(pairs, files["q"], steps=1, guidance=1.0, seed=0)
  np.testing.assert_array_equal(other.image, _infer(files, str(tmp_path), steps=1, guidance=1.0))
  service.edit(pairs, files["q"], steps=1, guidance=1.0, seed=1)
  assert service.editor.compilations == compiled + 1


def test_an_exported_run_edits_alike(service, files, tmp_path):
  """--params model.safetensors serves the same edits as the run folder."""
  path = str(tmp_path / "model.safetensors")
  run_loading.save_params_file(service.run, path)
  exported = service_lib.EditService(run_loading.load(params=path))
  pairs = [(files["a"], files["b"])]
  np.testing.assert_array_equal(exported.edit(pairs, files["q"], (20, 10, 110, 90), seed=2).image,
                                service.edit(pairs, files["q"], (20, 10, 110, 90), seed=2).image)


@pytest.mark.parametrize("change, message", [
    (dict(examples=[("a", "b"), ("a", "b")]), r"2 example pair\(s\) given, but the model was "
                                               "trained with data.num_examples = 1"),
    (dict(box=(50, 20, 50, 60)), r"box \[50.0, 20.0, 50.0, 60.0\] must satisfy"),
    (dict(query="bad"), "cannot read image .*bad.png"),
    (dict(steps=0), "steps must be between 1 and 1000"),
])
def test_service_refuses_bad_input(service, files, change, message):
  args = dict(examples=[("a", "b")], query="q", box=None, steps=None)
  args.update(change)
  with pytest.raises(ValueError, match=message):
    service.edit([(files[b], files[a]) for b, a in args["examples"]], files[args["query"]],
                 args["box"], steps=args["steps"])


def _refusal(call) -> str:
  """The message of the gr.Error that `call` raises."""
  with pytest.raises(gr.Error) as e:
    call()
  return e.value.message


def test_a_refused_box_names_the_query_once(service, files):
  handlers = app_lib.EditorApp(service)
  query = {"image": app_lib.as_upload(files["q"]), "boxes": [
      {"xmin": 50, "ymin": 20, "xmax": 50, "ymax": 60}]}
  message = _refusal(lambda: handlers.edit_page(files["a"], files["b"], query, None, None, 0,
                                                progress=None))
  assert message == ("the query (q.png): box [50.0, 20.0, 50.0, 60.0] must satisfy "
                     "0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120 (the query's size in pixels)")


@pytest.mark.parametrize("steps, guidance, seed, message", [
    (None, None, 2**63, "seed must be in [0, 2**63), got 9223372036854775808"),
    (None, None, -1, "seed must be in [0, 2**63), got -1"),
    (None, math.nan, 0, "guidance must be a finite number, got nan"),
    (None, math.inf, 0, "guidance must be a finite number, got inf"),
    (None, None, math.inf, "steps, guidance and seed must be numbers: cannot convert float "
                           "infinity to integer"),
    (0, None, 0, "steps must be between 1 and 1000 (the run's diffusion.num_timesteps), got 0"),
    (1001, None, 0, "steps must be between 1 and 1000 (the run's diffusion.num_timesteps), "
                    "got 1001"),
])
def test_page_refuses_bad_sampler_settings(service, files, steps, guidance, seed, message):
  handlers = app_lib.EditorApp(service)
  query = {"image": app_lib.as_upload(files["q"]), "boxes": []}
  assert _refusal(lambda: handlers.edit_page(files["a"], files["b"], query, steps, guidance, seed,
                                             progress=None)) == message


def _turn_box(box, width, height):
  """A box on a width x height image after the image turns a quarter clockwise, as the
  box-drawing widget moves it (its onRotate)."""
  x0, y0, x1, y1 = box
  return (height - y1, x0, height - y0, x1), (height, width)


@pytest.mark.parametrize("orientation", [0, 1, 2, 3])
def test_a_turned_query_is_turned_with_its_box(files, orientation):
  """The widget shows the query turned `orientation` quarter turns clockwise and the box drawn
  on that: the handler gets the turned image, the box on the same pixels."""
  widget = app_lib.BoxedUpload(image_type="filepath", render=False)
  original = images.load_rgb(files["q"])
  region = (20, 10, 70, 40)
  box, size = region, original.shape[1::-1]
  for _ in range(orientation):
    box, size = _turn_box(box, *size)
  value = widget.preprocess(AnnotatedImageData(
      image=FileData(path=files["q"], orig_name="q.png"),
      boxes=[dict(zip(("xmin", "ymin", "xmax", "ymax"), box))], orientation=orientation))
  turned = images.load_rgb(value["image"].path)
  assert value["image"].name == "q.png" and turned.shape[1::-1] == size
  b = value["boxes"][0]
  x0, y0, x1, y1 = region
  np.testing.assert_array_equal(turned[b["ymin"]:b["ymax"], b["xmin"]:b["xmax"]],
                                np.rot90(original[y0:y1, x0:x1], -orientation))
  # An unreadable upload goes on as it is, for the edit to name it.
  bad = widget.preprocess(AnnotatedImageData(
      image=FileData(path=files["bad"], orig_name="bad.png"), orientation=orientation))
  assert bad["image"] == app_lib.Upload(files["bad"], "bad.png")


def test_uploads_over_the_limit_are_refused(service, files, monkeypatch):
  """The service refuses files over max_file_bytes (whatever path they came by); Gradio refuses
  uploads over max_file_size; app's --max_upload_mb sets both."""
  from gradio_client import Client, handle_file  # pylint: disable=import-outside-toplevel
  limit = 10_000  # a.png and b.png are under it, q.png over
  size = os.path.getsize(files["q"])
  assert os.path.getsize(files["a"]) < limit < size
  monkeypatch.setattr(service, "max_file_bytes", limit)
  with pytest.raises(ValueError, match=re.escape(f"q.png is over the upload limit ({size:,} "
                                                 f"bytes > 10,000)")):
    service.edit([(files["a"], files["b"])], files["q"])
  handlers = app_lib.EditorApp(service)
  query = {"image": app_lib.as_upload(files["q"]), "boxes": []}
  assert _refusal(lambda: handlers.edit_page(files["a"], files["b"], query, None, None, 0,
                                             progress=None)) == (
      f"the query (q.png) is over the upload limit ({size:,} bytes > 10,000)")
  monkeypatch.undo()

  demo = app_lib.build(service)
  port = _free_port()
  app_lib.launch(demo, host="127.0.0.1", port=port, block=False, max_file_size=limit)
  try:
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    with pytest.raises(Exception, match="exceeds the maximum file size of 10000 bytes"):
      client.predict(handle_file(files["a"]), handle_file(files["b"]), handle_file(files["q"]),
                     "", api_name="/edit")
    with open(files["q"], "rb") as f:  # the server refuses it too, whoever sends it
      response = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload",
                            files={"files": ("q.png", f.read(), "image/png")})
    assert response.status_code == 413, response.text
    small = client.predict(handle_file(files["a"]), handle_file(files["b"]),
                           handle_file(files["a"]), "", api_name="/edit")
    assert np.asarray(Image.open(small)).shape == (30, 40, 3)
  finally:
    demo.close()

  served = {}
  monkeypatch.setattr(app_lib, "launch", lambda demo, **kwargs: served.update(kwargs))
  monkeypatch.setattr(service_lib, "EditService", lambda run, **kwargs: served.update(
      service_kwargs=kwargs) or service)
  assert app_lib.main(["--workdir", tiny_workdir(), "--max_upload_mb", "0.5"]) == 0
  assert served["max_file_size"] == 2**19 and served["service_kwargs"] == {
      "max_file_bytes": 2**19}
  with pytest.raises(SystemExit):
    app_lib.main(["--workdir", tiny_workdir(), "--max_upload_mb", "0"])


@pytest.fixture(scope="module")
def server(service, files):
  """The editor on a free loopback port, with the built-in gallery and a folder of pairs."""
  pairs = os.path.join(files["folder"], "pairs", "mirror")
  os.makedirs(pairs)
  for i in range(2):
    Image.open(files["a"]).save(os.path.join(pairs, f"p{i}_before.png"))
    Image.open(files["b"]).save(os.path.join(pairs, f"p{i}_after.png"))
  gallery_dir = os.path.join(files["folder"], "gallery")
  os.makedirs(gallery_dir)
  examples = gallery.builtin(service.config, gallery_dir) + gallery.from_folder(
      os.path.dirname(pairs), service.num_examples)
  assert [e.task for e in examples][-1] == "mirror" and len(examples) >= 7
  demo = app_lib.build(service, examples)
  port = _free_port()
  app_lib.launch(demo, host="127.0.0.1", port=port, block=False,
                 allowed_paths=[gallery_dir, os.path.dirname(pairs)])
  yield f"http://127.0.0.1:{port}/"
  demo.close()


def test_api_edit_matches_infer_and_reports_bad_input(server, service, files, tmp_path):
  from gradio_client import Client, handle_file  # pylint: disable=import-outside-toplevel
  client = Client(server, verbose=False)
  compiled = service.editor.compilations
  out = client.predict(handle_file(files["a"]), handle_file(files["b"]), handle_file(files["q"]),
                       "20,10,110,90", api_name="/edit")
  np.testing.assert_array_equal(np.asarray(Image.open(out)),
                                _infer(files, str(tmp_path), (20, 10, 110, 90)))
  out = client.predict(handle_file(files["a"]), handle_file(files["b"]), handle_file(files["q"]),
                       "", 2, 7.5, 5, api_name="/edit")
  np.testing.assert_array_equal(np.asarray(Image.open(out)),
                                _infer(files, str(tmp_path), seed=5, steps=2))
  # The box padding and the output size, as infer's --box_padding and --output_size.
  region = ["--box_padding", "12", "--output_size", "tile"]
  out = client.predict(handle_file(files["a"]), handle_file(files["b"]), handle_file(files["q"]),
                       "20,10,110,90", 2, 7.5, 5, "12", "tile", api_name="/edit")
  want = _infer(files, str(tmp_path), (20, 10, 110, 90), seed=5, steps=2, flags=region)
  assert want.shape == (service.tile_size, service.tile_size, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(out)), want)
  query = {"image": app_lib.as_upload(files["q"]), "boxes": [
      {"xmin": 20, "ymin": 10, "xmax": 110, "ymax": 90}]}
  page = app_lib.EditorApp(service).edit_page(files["a"], files["b"], query, 2, 7.5, 5, 12, "tile",
                                              progress=None)
  np.testing.assert_array_equal(page[0], want)
  assert service.editor.compilations == compiled  # one compiled sampler serves the requests
  for before, box, message in ((files["bad"], "", "cannot read image example 1 before (bad.png)"),
                               (files["a"], "30,30,30,50", "must satisfy 0 <= x0 < x1")):
    with pytest.raises(Exception, match=re.escape(message)):
      client.predict(handle_file(before), handle_file(files["b"]), handle_file(files["q"]), box,
                     api_name="/edit")
  with pytest.raises(Exception, match=re.escape("box_padding must be a finite number of pixels "
                                                 ">= 0, got '-1'")):
    client.predict(handle_file(files["a"]), handle_file(files["b"]), handle_file(files["q"]),
                   "20,10,110,90", 2, 7.5, 0, "-1", api_name="/edit")
  # The server keeps serving.
  assert client.predict(handle_file(files["a"]), handle_file(files["b"]),
                        handle_file(files["q"]), "", api_name="/edit")


def _chromium_or_skip():
  if os.path.exists(CHROMIUM):
    return
  if os.environ.get("CI"):
    pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run installs Debian's chromium package")
  pytest.skip(f"the browser test needs Debian's Chromium at {CHROMIUM} (apt-get install "
              f"chromium; CI installs it)")


@contextlib.contextmanager
def _editor_page(server):
  """The web editor at `server`, loaded in Debian's Chromium (Playwright), closed after use."""
  _chromium_or_skip()
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    try:
      page = browser.new_page(viewport={"width": 1400, "height": 1100})
      page.goto(server)
      page.wait_for_selector("#edit", timeout=60_000)
      yield page
    finally:
      browser.close()


def _shown_result(page) -> np.ndarray:
  """The edited image the page shows, as the browser fetched it (uint8 RGB)."""
  src = page.locator("#result img").get_attribute("src")
  return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _upload(page, files) -> None:
  """The example pair and the query uploaded into the page; waits for the query's canvas."""
  page.locator("#before0 input[type=file]").set_input_files(files["a"])
  page.locator("#after0 input[type=file]").set_input_files(files["b"])
  page.locator("#query input[type=file]").set_input_files(files["q"])
  page.locator("#query canvas").wait_for(timeout=30_000)
  page.wait_for_timeout(500)


def _drag_box(page, size, start, end) -> None:
  """Drags the mouse from `start` to `end` (query pixels) on the query drawn `size` = (width,
  height) pixels, fitted and centred in its canvas."""
  c = page.locator("#query canvas").bounding_box()
  width, height = size
  scale = min(c["width"] / width, c["height"] / height)
  left = c["x"] + (c["width"] - width * scale) / 2
  top = c["y"] + (c["height"] - height * scale) / 2
  page.mouse.move(left + start[0] * scale, top + start[1] * scale)
  page.mouse.down()
  page.mouse.move(left + end[0] * scale, top + end[1] * scale, steps=8)
  page.mouse.up()


def _edit_and_read_box(page) -> list[int]:
  """Presses Edit, waits for the result, and returns the box the status line reports."""
  page.locator("#edit").click()
  page.wait_for_function(
      "() => document.querySelector('#status')?.innerText.includes('edited in')",
      timeout=120_000)
  status = page.locator("#status").inner_text()
  return [int(v) for v in re.search(r"box \[(\d+), (\d+), (\d+), (\d+)\]", status).groups()]


def test_browser_draws_a_box_and_edits(server, files, tmp_path):
  with _editor_page(server) as page:
    # A ready edit from the gallery loads with one click.
    page.get_by_text("mirror", exact=True).click()
    page.wait_for_selector("#before0 img", timeout=30_000)
    # Our own files, and a box dragged on the query with the mouse.
    _upload(page, files)
    _drag_box(page, (160, 120), (32, 30), (112, 96))
    box = _edit_and_read_box(page)
    # The drawn box is where the mouse went, in the query's pixels.
    assert abs(box[0] - 32) <= 4 and abs(box[2] - 112) <= 4, box
    assert abs(box[1] - 30) <= 4 and abs(box[3] - 96) <= 4, box
    page.wait_for_function("() => document.querySelector('#result img')?.naturalWidth > 0 && "
                           "document.querySelector('#grid img')?.naturalWidth > 0",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    result = _shown_result(page)
    want = _infer(files, str(tmp_path), box)
    assert result.shape == want.shape == (120, 160, 3)
    assert image_quality.psnr(result[None], want[None])[0] >= 40.0
    # An unreadable upload is a message in the page; the page keeps working.
    page.locator("#before0 input[type=file]").set_input_files(files["bad"])
    page.wait_for_timeout(500)
    page.locator("#edit").click()
    page.get_by_text("cannot read image example 1 before (bad.png)").first.wait_for(
        timeout=60_000)


def test_browser_turns_the_query_and_edits_it_as_shown(server, files, tmp_path):
  """The query turned a quarter clockwise in the widget, a box drawn on it: the edit is infer's
  of the turned query with that box. A seed out of range is a message in the page."""
  turned_query = str(tmp_path / "turned.png")
  Image.fromarray(np.rot90(images.load_rgb(files["q"]), -1)).save(turned_query)  # 120 x 160
  with _editor_page(server) as page:
    _upload(page, files)
    page.locator("#query button[aria-label='Rotate clockwise']").click()
    page.wait_for_timeout(500)
    _drag_box(page, (120, 160), (20, 30), (100, 120))  # the query, turned: 120 x 160
    box = _edit_and_read_box(page)
    assert abs(box[0] - 20) <= 4 and abs(box[2] - 100) <= 4, box
    assert abs(box[1] - 30) <= 4 and abs(box[3] - 120) <= 4, box
    page.wait_for_function("() => document.querySelector('#result img')?.naturalWidth > 0",
                           timeout=30_000)
    result = _shown_result(page)
    want = _infer(files, str(tmp_path), box, query=turned_query)
    assert result.shape == want.shape == (160, 120, 3)
    assert image_quality.psnr(result[None], want[None])[0] >= 40.0
    # A seed past 2**63 - 1 is the page's error message, not a crash.
    page.locator("#seed input").fill(str(2**63))
    page.locator("#edit").click()
    page.get_by_text("seed must be in [0, 2**63)").first.wait_for(timeout=60_000)


def test_make_app_serves_the_demo_run(files):
  """`make app` as the README shows it, on the tiny run (DEMO_DIR) and a free port."""
  from gradio_client import Client, handle_file  # pylint: disable=import-outside-toplevel
  port = _free_port()
  proc = subprocess.Popen(["make", "app", f"DEMO_DIR={tiny_workdir()}",
                           f"APP_FLAGS=--port {port}"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    deadline = time.time() + 300
    while True:
      assert proc.poll() is None, proc.stdout.read()
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
          break
      except OSError:
        assert time.time() < deadline, "the app did not start listening"
        time.sleep(1)
    out = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
        handle_file(files["a"]), handle_file(files["b"]), handle_file(files["q"]), "",
        api_name="/edit")
    assert np.asarray(Image.open(out)).shape == (120, 160, 3)
  finally:
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def test_cli_errors_are_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "imagebrush_jax.app", "--workdir",
                         str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and str(tmp_path / "missing") in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr

