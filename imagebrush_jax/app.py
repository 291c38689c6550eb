"""The web editor: edit an image by example in the browser, the region of interest drawn as a box.

  python -m imagebrush_jax.app --workdir DIR [--step N] [--port 7860] [--host 127.0.0.1]
      [--examples DIR] [--max_upload_mb 50]
  python -m imagebrush_jax.app --params model.safetensors ...   (a run exported by `export`)

A Gradio app, served on 127.0.0.1 unless --host says otherwise, analytics off. The page takes
the run's data.num_examples example pairs (before / after uploads), the query, on which a box is
dragged with the mouse (none = the whole image; the query may be turned by quarter turns in
the page, and is edited as shown), DDIM steps, guidance scale, seed, the box padding (query
pixels of context around the box, blank: infer's default) and the output size; it shows the
edited query at its own size (with a box, only the box changed: a region edit at the tile's
resolution, inference/regions.py), or the generated tile ("tile"), and the grid the model saw
(examples, query or the box's window, and result, the box outlined). A gallery loads ready
edits of the built-in task family (and of --examples, a folder of pairs in the folder-source
layout) with one click.

The same edit is an API endpoint, `edit`, for gradio_client:

  client.predict(handle_file("before.png"), handle_file("after.png"), handle_file("query.png"),
                 "x0,y0,x1,y1", api_name="/edit")  # box in the query's pixels, "" for none;
                 # then optionally steps, guidance, seed, box padding ("" for the default) and
                 # output size ("query" or "tile")

Every edit is infer's single edit (same reading, tiling, region window, paste, sampler and
seed: inference/service.py; the page's box padding and output size are infer's --box_padding and
--output_size). One compiled sampler serves all requests, one at a time (queued);
an unreadable upload, a missing pair, a bad box, bad sampler settings or a file over
--max_upload_mb is a message in the page, and the server keeps serving.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from typing import Any, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
import gradio as gr
from gradio import processing_utils
from gradio_image_annotation import image_annotator
import numpy as np

from imagebrush_jax.infra import cli
from imagebrush_jax.inference import run_loading
from imagebrush_jax.inference import gallery as gallery_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import regions
from imagebrush_jax.inference import service as service_lib
# pylint: enable=wrong-import-position

CONCURRENCY_ID = "editor"  # the page's and the API's edits share one queue slot
MB = 2**20
DEFAULT_MAX_UPLOAD_MB = 50
# System fonts only: the page must not reach out to a font service.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def refuse(message: str) -> gr.Error:
  """The error a bad request gets: its message in the page (until closed), one line in the
  server's log, no traceback."""
  print(f"edit refused: {message}", file=sys.stderr, flush=True)
  return gr.Error(message, duration=None, print_exception=False)


@dataclasses.dataclass(frozen=True)
class Upload:
  """An uploaded file as Gradio stored it, and its name on the user's machine."""
  path: str
  name: str


def as_upload(value: Any) -> Upload | None:
  """An input value as an Upload (a plain path where Gradio prepared the file itself)."""
  if value is None or isinstance(value, Upload):
    return value
  if isinstance(value, str) and value:
    return Upload(value, os.path.basename(value))
  raise refuse(f"unexpected image input {type(value).__name__}")


def _upload(data) -> Upload | None:
  if data is None or not data.path:
    return None
  return Upload(data.path, data.orig_name or os.path.basename(data.path))


class UploadImage(gr.Image):
  """A gr.Image that passes its upload on undecoded, so that every image is read by infer's own
  reader and an unreadable file is a message naming it, not a decoding error inside Gradio."""
  is_template = True  # drawn by the page as a gr.Image

  def preprocess(self, payload) -> Upload | None:
    return _upload(payload)


def rotate_upload(upload: Upload | None, orientation: int, cache_dir: str) -> Upload | None:
  """`upload` turned `orientation` quarter turns clockwise (the box-drawing widget's rotation),
  saved as a PNG in `cache_dir`; unturned, or unreadable (the edit then names it), as it is."""
  turns = int(orientation or 0) % 4
  if upload is None or not turns:
    return upload
  try:
    pixels = images.load_rgb(upload.path)
  except images.ImageLoadError:
    return upload
  path = processing_utils.save_img_array_to_cache(np.rot90(pixels, -turns), cache_dir,
                                                  format="png")
  return Upload(path, upload.name)


class BoxedUpload(image_annotator):
  """The box-drawing image component, passing its upload on with the drawn boxes: undecoded,
  or, when turned in the page, turned likewise, so that the boxes (drawn on the turned image)
  fall on the same pixels."""
  is_template = True  # drawn by the page as an image_annotator, from that package's files

  @classmethod
  def get_component_class_id(cls) -> str:
    return image_annotator.get_component_class_id()

  def preprocess(self, payload) -> dict | None:
    if payload is None:
      return None
    return {"image": rotate_upload(_upload(payload.image), payload.orientation,
                                   self.GRADIO_CACHE),
            "boxes": self.preprocess_boxes(payload.boxes or [])}


class EditorApp:
  """The handlers behind the page and the API, around one EditService."""

  def __init__(self, service: service_lib.EditService):
    self.service = service
    self.k = service.num_examples

  def _edit(self, befores: Sequence[Upload | None], afters: Sequence[Upload | None],
            query: Upload | None, box: Sequence[float] | None, steps: Any, guidance: Any,
            seed: Any, progress: gr.Progress | None = None, box_padding: Any = None,
            output_size: Any = None) -> service_lib.Edit:
    names = {}
    befores, afters = [as_upload(b) for b in befores], [as_upload(a) for a in afters]
    query = as_upload(query)
    for k, (before, after) in enumerate(zip(befores, afters)):
      if before is None or after is None:
        raise refuse(f"example {k + 1}: upload both its before and its after image "
                     f"(this model takes {self.k} example pair(s))")
      names[before.path] = f"example {k + 1} before ({before.name})"
      names[after.path] = f"example {k + 1} after ({after.name})"
    if query is None:
      raise refuse("upload the query image to edit")
    names[query.path] = f"the query ({query.name})"
    try:
      steps = None if steps in (None, "") else int(steps)
      guidance = None if guidance in (None, "") else float(guidance)
      seed = 0 if seed in (None, "") else int(seed)
    except (TypeError, ValueError, OverflowError) as e:
      raise refuse(f"steps, guidance and seed must be numbers: {e}") from e
    if isinstance(box_padding, str):
      box_padding = box_padding.strip() or None
    output_size = output_size or "query"
    if progress is not None:
      progress(0.1, desc=f"sampling ({steps or self.service.default_steps} DDIM steps)")
    try:
      return self.service.edit([(b.path, a.path) for b, a in zip(befores, afters)], query.path,
                               box, steps=steps, guidance=guidance, seed=seed,
                               box_padding=box_padding, output_size=output_size)
    except ValueError as e:  # a bad upload (named), box or sampler setting: one line
      message = " ".join(str(e).split())
      for path, label in sorted(names.items(), key=lambda item: -len(item[0])):
        message = message.replace(path, label)
      raise refuse(message) from None

  def edit_page(self, *args, progress=gr.Progress()):
    """The page's Edit button: 2K uploads, the annotated query, steps, guidance, seed, and
    optionally the box padding and the output size."""
    befores, afters = args[:self.k], args[self.k:2 * self.k]
    annotated, steps, guidance, seed, *options = args[2 * self.k:]
    box_padding, output_size = (list(options) + [None, None])[:2]
    query, box = None, None
    if isinstance(annotated, dict):
      query = annotated["image"]
      if annotated["boxes"]:
        b = annotated["boxes"][-1]
        box = (b["xmin"], b["ymin"], b["xmax"], b["ymax"])
    edit = self._edit(befores, afters, query, box, steps, guidance, seed, progress,
                      box_padding, output_size)
    return edit.image, edit.grid, (f"edited in {edit.seconds:.1f} s" + (
        f", box {[int(v) for v in box]}" if box else ", whole image"))

  def edit_api(self, *args):
    """The `edit` endpoint: K (before, after) files, the query file, "x0,y0,x1,y1" or "", steps,
    guidance, seed, and optionally the box padding ("" for the default) and the output size
    ("query" or "tile") -> the edited query."""
    pairs = args[:2 * self.k]
    query, box_text, steps, guidance, seed, *options = args[2 * self.k:]
    box_padding, output_size = (list(options) + [None, None])[:2]
    box = None
    if box_text and str(box_text).strip():
      try:
        box = images.parse_box(str(box_text))
      except ValueError as e:
        raise refuse(str(e).replace("--box", "box")) from e
    return self._edit(pairs[0::2], pairs[1::2], query, box, steps, guidance, seed,
                      box_padding=box_padding, output_size=output_size).image


def build(service: service_lib.EditService, examples: Sequence[gallery_lib.Example] = (),
          title: str = "ImageBrush") -> gr.Blocks:
  """The editor page and the `edit` API endpoint for one loaded run."""
  handlers = EditorApp(service)
  k = service.num_examples
  upload = dict(type="filepath", sources=["upload", "clipboard"], height=220)
  with gr.Blocks(title=title, analytics_enabled=False) as demo:
    gr.Markdown(f"# {title}\nShow {k} example pair(s) of an edit, upload a query and drag a box "
                f"on it around the region to edit (no box: the whole image).")
    with gr.Row():
      with gr.Column():
        befores, afters = [], []
        for i in range(k):
          with gr.Row():
            befores.append(UploadImage(label=f"example {i + 1}: before", elem_id=f"before{i}",
                                       **upload))
            afters.append(UploadImage(label=f"example {i + 1}: after", elem_id=f"after{i}",
                                      **upload))
        query = BoxedUpload(label="query: drag a box on it", elem_id="query", single_box=True,
                            disable_edit_boxes=True, image_type="filepath", sources=["upload"],
                            show_remove_button=True, box_min_size=2, boxes_alpha=0.1,
                            height=320)
        with gr.Row():
          steps = gr.Number(service.default_steps, label="DDIM steps", precision=0, minimum=1,
                            maximum=service.num_timesteps, elem_id="steps")
          guidance = gr.Number(service.default_guidance, label="guidance scale",
                               elem_id="guidance")
          seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
        with gr.Row():
          box_padding = gr.Textbox("", label="box padding (query pixels around the box)",
                                   placeholder="auto", elem_id="box_padding")
          output_size = gr.Radio(list(regions.OUTPUT_SIZES), value="query",
                                 label="output size (the query's, or the model's tile)",
                                 elem_id="output_size")
        button = gr.Button("Edit", variant="primary", elem_id="edit")
      with gr.Column():
        result = gr.Image(label="edited query", type="numpy", format="png", interactive=False,
                          elem_id="result")
        status = gr.Markdown(elem_id="status")
        grid = gr.Image(label="the grid the model saw (examples, query or the box's window, "
                        "result)", type="numpy",
                        format="png", interactive=False, elem_id="grid")
    page_inputs = [*befores, *afters, query, steps, guidance, seed, box_padding, output_size]
    button.click(handlers.edit_page, page_inputs, [result, grid, status], api_name="edit_page",
                 api_visibility="private", concurrency_id=CONCURRENCY_ID, concurrency_limit=1)
    if examples:
      gr.Examples(
          [[*(p[0] for p in e.pairs), *(p[1] for p in e.pairs),
            {"image": e.query, "boxes": []}] for e in examples],
          [*befores, *afters, query], label="ready edits (click one to load it)",
          example_labels=[e.task for e in examples], examples_per_page=12)

    with gr.Row(visible=False):  # the API endpoint's own inputs and output
      api_files = []
      for i in range(k):
        api_files += [UploadImage(label=f"before{i + 1}", type="filepath"),
                      UploadImage(label=f"after{i + 1}", type="filepath")]
      api_inputs = [*api_files, UploadImage(label="query", type="filepath"),
                    gr.Textbox("", label="box"),
                    gr.Number(service.default_steps, label="steps", precision=0),
                    gr.Number(service.default_guidance, label="guidance"),
                    gr.Number(0, label="seed", precision=0),
                    gr.Textbox("", label="box_padding"),
                    gr.Radio(list(regions.OUTPUT_SIZES), value="query", label="output_size")]
      api_output = gr.Image(label="edited", type="numpy", format="png")
      api_button = gr.Button("edit")
    api_button.click(handlers.edit_api, api_inputs, api_output, api_name="edit",
                     concurrency_id=CONCURRENCY_ID, concurrency_limit=1)
  demo.queue(max_size=64)
  return demo


def launch(demo: gr.Blocks, *, host: str, port: int, allowed_paths: Sequence[str] = (),
           block: bool = True, max_file_size: int | None = DEFAULT_MAX_UPLOAD_MB * MB) -> None:
  """Serves `demo` (no share link, no server-side rendering, system fonts); uploads over
  `max_file_size` bytes (None: no limit) are refused."""
  demo.launch(server_name=host, server_port=port, share=False, show_error=True, ssr_mode=False,
              theme=THEME, allowed_paths=list(allowed_paths), prevent_thread_lock=not block,
              quiet=True, max_file_size=max_file_size)


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.app` (defined when it runs, never at import)."""
  cli.define_run_selector_flags(flag_values)
  flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0: every interface).",
                      flag_values=flag_values)
  flags.DEFINE_integer("port", 7860, "Port to serve on.", flag_values=flag_values)
  flags.DEFINE_string("examples", None, "A folder of pairs (<task>/<id>_before.png, "
                      "<id>_after.png) for the gallery.", flag_values=flag_values)
  flags.DEFINE_float("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, "Largest upload accepted, in MB of "
                     "2**20 bytes (page and API).", flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
  """`python -m imagebrush_jax.app` in this process, `argv` its flags: the exit status (a
  usage error exits, status 2, as the program does)."""
  return cli.call_program(define_flags, program, argv, "imagebrush_jax.app")


def program(args: flags.FlagValues) -> int:
  """Loads the run the parsed flags `args` choose and serves the editor until stopped."""
  selection = cli.selected_run(args)
  if not args.max_upload_mb > 0:
    raise app.UsageError(f"--max_upload_mb must be positive, got {args.max_upload_mb}")
  max_upload = int(args.max_upload_mb * MB)
  try:
    run = run_loading.load(selection.workdir, selection.params, selection.step)
    service = service_lib.EditService(run, max_file_bytes=max_upload)
    folder = tempfile.mkdtemp(prefix="imagebrush_gallery_")
    examples = gallery_lib.builtin(run.config, folder)
    if args.examples:
      examples += gallery_lib.from_folder(args.examples, service.num_examples)
  except cli.USER_ERRORS as e:  # pylint: disable=catching-non-exception
    return cli.report(e)
  source = selection.source
  print(f"loaded {source} step {run.step}; compiling the sampler ...", file=sys.stderr)
  service.warm_up()
  demo = build(service, examples, title=f"ImageBrush: {os.path.basename(source.rstrip('/'))}")
  print(f"serving http://{args.host}:{args.port}", file=sys.stderr, flush=True)
  launch(demo, host=args.host, port=args.port, max_file_size=max_upload,
         allowed_paths=[folder] + ([args.examples] if args.examples else []))
  return 0


if __name__ == "__main__":
  cli.run_program(define_flags, program)
