"""Edit images by example with a trained ImageBrush run.

Single edit (latest checkpoint of WORKDIR, EMA parameters):
  python -m imagebrush_jax.infer --workdir DIR --before a.png --after b.png --query q.png \
      --output out.png [--box x0,y0,x1,y1] [--box_padding PX] [--output_size query|tile] \
      [--steps 50] [--guidance 7.5] [--seed 0]
(--before / --after repeat, in order, for several example pairs; --step N takes an earlier
checkpoint; --params model.safetensors, a run exported by `python -m imagebrush_jax.export`,
stands in for --workdir.)

Batch edit from a JSON-lines manifest (see inference/manifest.py for the row format):
  python -m imagebrush_jax.infer --workdir DIR --manifest rows.jsonl --output_dir OUT \
      [--batch_size 32] [--box_padding PX] [--output_size query|tile]

The same command runs in several processes, one per host, each sampling on its own devices
(launch/*.sh start it as they start training: `infer` in place of CONFIG WORKDIR, then these
flags; jax.distributed starts as in training, from --coordinator_address / --num_processes /
--process_id or the environment the launchers set):
  NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local.sh infer --workdir DIR \
      --manifest rows.jsonl --output_dir OUT            # 2 simulated hosts on this machine
  COORDINATOR_ADDRESS=host0:12355 NUM_HOSTS=4 HOST_INDEX=<i> launch/gpu_multinode.sh infer \
      --workdir DIR --manifest rows.jsonl --output_dir OUT       # once per GPU host
  STEPS=infer TPU_NAME=... ZONE=... launch/tpu_pod.sh infer --workdir gs://... \
      --manifest gs://.../rows.jsonl --output_dir gs://...       # every worker of a pod slice
Manifest line N is edited by process (N - 1) % process_count alone (round robin on line
numbers: fixed by the file, the same in a rerun, whatever rows fail), and sampled from its own
key, fold_in(key(--seed), N), so its output is the same whatever the number of processes or
devices (bit for bit at the same per-device batch shape on the same kind of device). The
processes do not talk while sampling; every one must read the manifest, the images and the
run, and write OUT (a shared folder or gs://). Process i writes OUT/errors.process-<i>.jsonl
and OUT/summary.process-<i>.json ({"process", "processes", "done", "failed", "skipped",
"seconds", "finished"}; "finished": false while it works). When every process has finished its
rows (a barrier: process_allgather of their counts, as training gathers its flags), process 0
writes OUT/errors.jsonl (every process's errors, in line order) and OUT/summary.json ({"done",
"failed", "skipped", "processes", "seconds"}: totals, the slowest process's seconds) and prints
the summary on stdout, one JSON line; the others log their part on stderr. One process writes
errors.jsonl as rows fail and summary.json at the end, and prints the summary. A killed job
rerun with the same command (with any number of processes) skips every row whose output exists
(outputs are written atomically: one that exists is whole) and edits the rest; its summary
counts the former as skipped.

Without a box, every image becomes a tile as the run's evaluation tiles did
(data.augment.TileSpec): resized (squashed) to config.data.tile_size * crop_scale pixels a side
with config.data.resize_method, then the centred tile is cropped, so a crop_scale above 1 trims
a thin border of each input (round(tile_size * (crop_scale - 1) / 2) render pixels a side). The
whole query is edited at the tile's resolution and the generated tile is resized back to the
query's size with the same resize method (it shows the query's centre region, border trimmed,
stretched to the full size).

With a --box / "box" (query pixels) the edit is a region edit at the tile's full resolution
(inference/regions.py): the model edits a window around the box (the box grown by --box_padding
query pixels a side, default a quarter of its larger side and at least 4; grown to a square of
at least the tile's size where the image allows; kept inside the image), resized straight to
the tile with the run's resize method (no centred crop: the window is already the crop), the
box given in the window tile's coordinates. The generated tile is resized back to the window
and blended into the query inside the box only, with a feathered edge of 2 pixels inside the
box's border (none where the box meets the image's edge): every pixel outside the box is the
query's own, bit for bit. Example pairs are tiled whole either way.

--output_size query (default) writes the query's size, as above; --output_size tile writes the
model's own pixels, the generated tile as it is (tile_size pixels a side; with a box, the
window's tile).

Rows are loaded in a background thread while the device samples, batched to one fixed shape
(the last batch padded, so one compilation serves the whole run) and sharded over this
process's devices. Outputs are written atomically; rows whose output exists are skipped, so a
rerun finishes what an interrupted run left. A row whose inputs fail (missing, corrupt,
truncated or oversized image, decompression bomb, wrong number of pairs, bad box, bad JSON)
goes to OUT/errors.jsonl as {"line": N, "error": "..."} while the others proceed.

Exit status: 0 on success; 1 when a batch run finished but some rows failed (in a run of
several processes: process 0 for all rows, the others for their own), or when a process of
several did not finish its rows (process 0 then says which, and merges nothing); 2 for usage,
input and config errors (a bad argument, an unreadable single-edit image, a missing manifest,
workdir or checkpoint, a single edit in several processes), printed as one line "error: ..."
naming the file, key or flag. Sampler settings are checked as the web editor checks them
(inference/editor.py): --seed in [0, 2**63), --steps in [1, diffusion.num_timesteps],
--guidance and --eta finite.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
import jax
from jax.experimental import multihost_utils
import numpy as np

from imagebrush_jax.inference import batch as batch_lib
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import images
from imagebrush_jax.inference import manifest as manifest_lib
from imagebrush_jax.inference import regions
from imagebrush_jax.inference import run_loading
from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel

# ---------------------------------------------------------------------------- command line


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.infer` (defined when it runs, never at import)."""
  cli.define_run_selector_flags(flag_values)
  flags.DEFINE_bool("raw_params", False, "Use the raw parameters instead of the EMA ones.",
                    flag_values=flag_values)
  # A single edit.
  flags.DEFINE_multi_string("before", [], "Example input (repeat, in order)",
                            flag_values=flag_values)
  flags.DEFINE_multi_string("after", [], "Example output (repeat, in order)",
                            flag_values=flag_values)
  flags.DEFINE_string("query", None, "Image to edit.", flag_values=flag_values)
  flags.DEFINE_string("output", None, "Output PNG (--output_size: the query's size or the "
                      "tile's).", flag_values=flag_values)
  flags.DEFINE_string("box", None, "x0,y0,x1,y1 region of the query to edit, in its pixels; "
                      "pixels outside it are kept.", flag_values=flag_values)
  # Single and batch edits.
  flags.DEFINE_float("box_padding", None, "Query pixels of context around a box that the model "
                     "edits with it (default: a quarter of the box's larger side, at least "
                     f"{regions.MIN_PADDING}).", flag_values=flag_values)
  flags.DEFINE_enum("output_size", "query", list(regions.OUTPUT_SIZES), "query: the output is "
                    "the query's size (a box pasted in, the rest kept); tile: the generated "
                    "tile as it is.", flag_values=flag_values)
  # A batch of edits.
  flags.DEFINE_string("manifest", None, "JSON-lines file of edits.", flag_values=flag_values)
  flags.DEFINE_string("output_dir", None, "Folder for outputs and errors.jsonl.",
                      flag_values=flag_values)
  flags.DEFINE_integer("batch_size", None, "Grids per device batch (default 8 x local devices).",
                       flag_values=flag_values)
  flags.DEFINE_bool("no_skip", False, "Redo rows whose output exists.", flag_values=flag_values)
  # Sampling (defaults: the run's config.sampling).
  flags.DEFINE_integer("steps", None, "DDIM steps, 1 to the run's diffusion.num_timesteps.",
                       flag_values=flag_values)
  flags.DEFINE_float("guidance", None, "Classifier-free guidance scale.",
                     flag_values=flag_values)
  flags.DEFINE_float("eta", None, "DDIM eta (0 = deterministic).", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Sampling seed, in [0, 2**63).", flag_values=flag_values)
  # Several processes (launch/*.sh set these through the environment, as for training).
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a batch run in "
                      "several processes (or JAX_COORDINATOR_ADDRESS).", flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "Processes sharing the manifest (or "
                       "JAX_NUM_PROCESSES).", flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "This process's index (or JAX_PROCESS_ID).",
                       flag_values=flag_values)


def _check_args(args: flags.FlagValues) -> None:
  single = [args.before, args.after, args.query, args.output, args.box]
  if args.manifest:
    if any(single):
      raise app.UsageError("--manifest cannot be combined with "
                           "--before/--after/--query/--output/--box")
    if not args.output_dir:
      raise app.UsageError("--manifest needs --output_dir")
  else:
    if args.output_dir:
      raise app.UsageError("--output_dir goes with --manifest")
    if not (args.query and args.output and args.before and args.after):
      raise app.UsageError("a single edit needs --before, --after, --query and --output "
                           "(or use --manifest and --output_dir)")
    if len(args.before) != len(args.after):
      raise app.UsageError(f"--before given {len(args.before)} time(s) but --after "
                           f"{len(args.after)}: they pair up in order")
  if args.batch_size is not None and args.batch_size < 1:
    raise app.UsageError(f"--batch_size must be positive, got {args.batch_size}")
  try:
    regions.check_padding(args.box_padding, "--box_padding")
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def main(argv: Sequence[str]) -> int:
  """`python -m imagebrush_jax.infer` in this process, `argv` its flags: the exit status (a
  usage error exits, status 2, as the program does)."""
  return cli.call_program(define_flags, program, argv, "imagebrush_jax.infer")


def program(args: flags.FlagValues) -> int:
  """Edits as the parsed flags `args` say; returns the exit status."""
  selection = cli.selected_run(args)
  _check_args(args)
  try:  # a no-op for one process; else jax.distributed, as the training programs start it
    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id)
  except (RuntimeError, ValueError) as e:
    return cli.fail(f"cannot start jax.distributed (--coordinator_address, --num_processes, "
                    f"--process_id or the JAX_* environment): {batch_lib.one_line(e)}")
  count = jax.process_count()
  if count == 1:
    return _edit(args, selection)[0]
  if not args.manifest:
    return cli.fail(f"a single edit (--query/--output) runs in one process, not {count}: "
                    f"give --manifest and --output_dir to share rows among processes")
  index = jax.process_index()
  part = None
  try:
    status, part = _edit(args, selection, index, count)
  finally:
    # Every process waits here for all the others, even after an error of its own (so that none
    # is left waiting), handing process 0 its counts; a process that did not finish sends zeros.
    gathered = multihost_utils.process_allgather(_counts_array(part))
  if index != 0 or status == cli.USAGE_ERROR:  # an input error: every process says so itself
    if part is not None:  # stdout holds process 0's summary alone
      print(json.dumps(part), file=sys.stderr)
    return status
  rows = np.asarray(gathered)
  unfinished = [i for i, row in enumerate(rows) if not row[0]]
  if unfinished:
    return _job_error(f"process(es) {unfinished} of {count} did not finish their rows (see "
                      f"their logs); nothing merged: rerun the same command to finish the job")
  try:
    summary = batch_lib.merge_parts(args.output_dir, [_counts_of(row) for row in rows])
  except (ValueError, OSError) as e:
    return _job_error(batch_lib.one_line(e))
  print(json.dumps(summary))
  return 1 if summary["failed"] else 0


def _job_error(message: str) -> int:
  """A batch job that ran but did not complete: `error: <message>`, exit status 1."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  return 1


_COUNT_FIELDS = ("finished",) + batch_lib.COUNTS + ("centiseconds",)


def _counts_array(part: dict | None) -> np.ndarray:
  """A process's part as int32 [finished, done, failed, skipped, centiseconds] (zeros: it did
  not finish), for process_allgather."""
  if not part or not part.get("finished"):
    return np.zeros(len(_COUNT_FIELDS), np.int32)
  return np.asarray([1] + [int(part[k]) for k in batch_lib.COUNTS]
                    + [round(100 * float(part["seconds"]))], np.int32)


def _counts_of(row: np.ndarray) -> dict:
  values = dict(zip(_COUNT_FIELDS, (int(v) for v in row)))
  return {**{k: values[k] for k in batch_lib.COUNTS}, "seconds": values["centiseconds"] / 100}


def _edit(args: flags.FlagValues, selection: cli.RunSelection, process_index: int = 0,
          process_count: int = 1) -> tuple[int, dict | None]:
  """The edits of this process: (exit status, with a manifest its summary when it got to its
  rows, else None)."""
  try:  # a bucket that cannot be used stops the job here (load_run checks --workdir's)
    for path in (args.manifest, args.output, args.output_dir):
      if path:
        files.check_access(path)
  except files.StorageAccessError as e:
    return cli.report(e), None
  try:
    editor_lib.check_seed(args.seed)
  except ValueError as e:
    return cli.fail(batch_lib.one_line(e)), None
  if args.manifest and not files.isfile(args.manifest):
    return cli.fail(f"manifest not found: {args.manifest}"), None
  single_row = None
  if not args.manifest:
    try:
      box = None if args.box is None else tuple(images.parse_box(args.box))
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    single_row = manifest_lib.Row(
        line=0, examples=tuple(zip(args.before, args.after)), query=args.query,
        output=files.absolute(args.output), box=box)

  try:  # the messages name the folder, the checkpoint or the parameter that is wrong
    run = run_loading.load(selection.workdir, selection.params, selection.step,
                           use_ema=not args.raw_params)
  except cli.USER_ERRORS as e:  # pylint: disable=catching-non-exception
    return cli.report(e), None
  try:
    spec = batch_lib.tile_spec(run.config)
  except ValueError as e:
    return cli.fail(f"the run config of {selection.source}: {e}"), None
  print(f"loaded {selection.source} step {run.step} "
        f"({'raw' if args.raw_params else 'EMA'} parameters)", file=sys.stderr)
  try:  # the sampler settings, checked against the run (--steps <= diffusion.num_timesteps)
    editor = editor_lib.Editor(run, batch_size=1 if single_row else args.batch_size,
                               num_steps=args.steps, guidance_scale=args.guidance, eta=args.eta)
  except ValueError as e:
    return cli.fail(batch_lib.one_line(e)), None

  if single_row is not None:
    try:
      loaded = batch_lib.load_row(single_row, num_examples=int(run.config.data.num_examples),
                                  spec=spec, box_padding=args.box_padding)
    except (ValueError, OSError) as e:
      return cli.fail(batch_lib.one_line(e)), None
    batch = {k: v[None] for k, v in loaded.grid.items()}
    cell = editor.edit_grids(batch, editor_lib.rng_key(args.seed))[0]
    try:
      batch_lib.write_output(loaded, cell, spec.resize_method, args.output_size)
    except OSError as e:
      return cli.fail(f"cannot write {args.output}: {batch_lib.one_line(e)}"), None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0, None

  try:
    files.makedirs(args.output_dir)
  except OSError as e:
    return cli.fail(f"cannot create --output_dir {args.output_dir}: "
                    f"{batch_lib.one_line(e)}"), None
  several = process_count > 1
  part_path = files.join(args.output_dir, batch_lib.summary_part(process_index))
  if several:  # until this process has handled all its rows (a crash, a kill) it says so
    batch_lib.write_summary(part_path, {"process": process_index, "processes": process_count,
                                        "finished": False})
  prefix = f"process {process_index} of {process_count}: " if several else ""
  errors_file = batch_lib.errors_part(process_index) if several else batch_lib.ERRORS_FILE
  start = time.time()
  stats = batch_lib.edit_rows(
      editor, manifest_lib.read_manifest(args.manifest, args.output_dir,
                                         process_index=process_index,
                                         process_count=process_count),
      files.join(args.output_dir, errors_file), seed=args.seed, skip_existing=not args.no_skip,
      box_padding=args.box_padding, output_size=args.output_size,
      log=lambda m: print(prefix + m, file=sys.stderr))
  seconds = round(time.time() - start, 2)
  counts = {k: int(stats[k]) for k in batch_lib.COUNTS}
  if several:  # process 0 merges the parts once every process is done (program)
    summary = {"process": process_index, "processes": process_count, **counts,
               "seconds": seconds, "finished": True}
    batch_lib.write_summary(part_path, summary)
  else:
    summary = {**counts, "processes": 1, "seconds": seconds}
    batch_lib.write_summary(files.join(args.output_dir, batch_lib.SUMMARY_FILE), summary)
    print(json.dumps(summary))
  return (1 if stats["failed"] else 0), summary


if __name__ == "__main__":
  cli.run_program(define_flags, program)
