#!/usr/bin/env python3
"""Checks documented command lines without doing their work (the README commands the tests do
not run: an accelerator, hours or the network): the program exists and takes the flags, flag
values and config keys given, so that a command the docs show cannot rot unnoticed.

  .venv/bin/python tests/command_check.py ["COMMAND" ...]   # default: PLAN's unrun commands

- `[VAR=val ...] .venv/bin/python -m imagebrush_jax.NAME ...` or `... benchmarks/NAME.py ...`:
  the program runs as __main__ with absl.app.run stubbed (an argparse program: its parse_args):
  its flags are parsed (an unknown flag or bad value fails with its message), main is not
  called (nor the VAR settings applied). A
  config flag's --config.a.b=... overrides are applied at parse; then the typed options that
  training builds are built from it (migrate, ImageBrushSpec, data options, LoopOptions), with
  imagebrush_jax.train's start check that a latent-space model names its autoencoder file. A
  program with a dry run (DRY_RUNS) runs it, and the commands it prints are checked in turn.
- `launch/*.sh`, `benchmarks/*.sh`: run as written, PY a stand-in that records the python
  command lines they start, and a stand-in `gcloud` first on PATH whose `ssh --command=...`
  runs the remote command in a scratch worker folder, its .venv/bin/python the same stand-in;
  the recorded lines are checked as above.
- `make TARGET ...`: `make -n TARGET ...` succeeds. `hf SUB ...`: `hf SUB --help` succeeds and
  lists every flag used. Programs in UNCHECKED pass with their reason; any other fails.

Python checks are grouped: one subprocess per program (absl's flags are global).
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = (os.path.join(ROOT, ".venv", "bin", "python")
          if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")) else sys.executable)
PYTHONS = (".venv/bin/python", "python", "python3")
HF_CLIS = ("hf", "huggingface-cli")  # checked against `<cli> <subcommand> --help`
# Programs a command may run that cannot be checked here, and why.
UNCHECKED = {
    "wget": "a download",
    "curl": "a download",
    "unzip": "unpacks a download",
    "tar": "unpacks a download",
    "gcloud": "needs a Google Cloud login and project",
    "gsutil": "needs a Google Cloud login and project",
    "gcsfuse": "mounts a Cloud Storage bucket: needs a bucket and credentials",
    "sudo": "installs system packages as root",
    "source": "changes the calling shell's environment",
}
# Programs that read model.autoencoder.params when they start (imagebrush_jax.core.latent.load).
READS_AUTOENCODER = ("-m imagebrush_jax.train",)
# Programs with a dry run that prints the commands they would run, as JSON lines: the flag
# values that make it (nothing written: no --jsonl), and the keys of the commands printed.
DRY_RUNS = {"benchmarks/ladder.py": ({"dry_run": True, "jsonl": None},
                                     ("train_command", "eval_commands"))}
RESULT = "command_check result: "  # the line of a group's subprocess that holds its results

# `... tpu-vm ssh ... --command=CMD` of a python program: CMD runs in a scratch worker's home,
# its REMOTE_DIR's .venv/bin/python the recording stand-in; everything else is only logged.
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> {log}
cmd=""
for a in "$@"; do case "$a" in --command=*) cmd="${{a#--command=}}" ;; esac; done
[[ "$cmd" == *.venv/bin/python* ]] || exit 0
remote={home}/${{REMOTE_DIR:-imagebrush_jax}}
mkdir -p "$remote/.venv/bin" && ln -sf {recorder} "$remote/.venv/bin/python"
cd {home} && bash -c "$cmd"$'\\n'wait
"""
# The python stand-in: each call writes its arguments (NUL-separated) to a file of its own.
RECORDER = """#!/usr/bin/env bash
printf '%s\\0' "$@" > "$(mktemp {records}/XXXXXX)"
"""


class CheckError(Exception):
  """A command that fails its check; the message says why."""


def _target(argv: list[str]) -> str:
  """The program of a python command line's arguments: `-m NAME` or a script's path."""
  if argv[:1] == ["-m"] and len(argv) > 1:
    return f"-m {argv[1]}"
  if argv and argv[0].endswith(".py"):
    return os.path.relpath(os.path.join(ROOT, argv[0]), ROOT)
  raise CheckError(f"not a program of this project: python {shlex.join(argv)}")


def _script_runs(command: str, work: str) -> list[list[str]]:
  """The python command lines a shell script starts when run as written with the stand-ins."""
  records, home, bin_dir = (os.path.join(work, d) for d in ("records", "home", "bin"))
  for d in (records, home, bin_dir):
    os.makedirs(d)
  recorder = os.path.join(bin_dir, "python")
  for path, text in ((recorder, RECORDER.format(records=shlex.quote(records))),
                     (os.path.join(bin_dir, "gcloud"), FAKE_GCLOUD.format(
                         log=shlex.quote(os.path.join(work, "gcloud.log")),
                         home=shlex.quote(home), recorder=shlex.quote(recorder)))):
    with open(path, "w") as f:
      f.write(text)
    os.chmod(path, 0o755)
  env = dict(os.environ, PY=recorder, PATH=bin_dir + os.pathsep + os.environ["PATH"],
             OUT_DIR=os.path.join(work, "out"))
  proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  if proc.returncode:
    raise CheckError(f"exit status {proc.returncode}: {proc.stderr.strip()[-1500:]}")
  runs = []
  for name in sorted(os.listdir(records)):
    with open(os.path.join(records, name)) as f:
      argv = f.read().split("\0")[:-1]
    if argv not in runs:
      runs.append(argv)
  return runs


def _hf(program: str, args: list[str]) -> None:
  """`<program> SUBCOMMAND --help` succeeds and names every flag of `args` (a bare `hf`: the
  project's .venv/bin/hf)."""
  sub = [a for a in args if not a.startswith("-")][:1]
  path = os.path.join(ROOT, program if "/" in program else os.path.join(".venv", "bin", program))
  proc = subprocess.run([path, *sub, "--help"],
                        capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, COLUMNS="200", NO_COLOR="1"))
  if proc.returncode:
    raise CheckError(f"{program} {shlex.join(sub)} --help: exit status {proc.returncode}: "
                     + " ".join((proc.stdout + proc.stderr).split())[:500])
  for flag in (a.split("=")[0] for a in args if a.startswith("-")):
    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", proc.stdout):
      raise CheckError(f"{program} {shlex.join(sub)} has no flag {flag}")


def python_runs(command: str, work: str) -> list[list[str]]:
  """The python command lines (arguments after the interpreter) that `command` runs, to be
  checked by check_python; CheckError for a command that fails a check of its own."""
  tokens = shlex.split(command)
  while tokens and re.match(r"[A-Za-z_]\w*=", tokens[0]):
    tokens = tokens[1:]  # env settings: scripts get them from bash; flags do not depend on them
  if not tokens:
    raise CheckError("no program")
  program, args = tokens[0], tokens[1:]
  if program in PYTHONS:
    _target(args)
    return [args]
  if program.endswith(".sh"):
    if not os.path.isfile(os.path.join(ROOT, program)):
      raise CheckError(f"no script {program}")
    return _script_runs(command, work)
  if program == "make":
    proc = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    if proc.returncode:
      raise CheckError(f"make -n {shlex.join(args)}: {proc.stderr.strip()[-500:]}")
    return []
  if os.path.basename(program) in HF_CLIS:
    _hf(program, args)
    return []
  if program in UNCHECKED:
    return []
  raise CheckError(f"unknown program {program!r}: not checkable (UNCHECKED lists the programs "
                   "that cannot be checked, with why)")


def _run_group(target: str, argvs: list[list[str]]) -> list[dict[str, Any]]:
  """check_python's results for `target`'s command lines, from one subprocess."""
  proc = subprocess.run([PYTHON, os.path.abspath(__file__), "--group", target],
                        input=json.dumps(argvs), cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if not lines:
    message = f"the check of {target} failed: {(proc.stdout + proc.stderr)[-2000:]}"
    return [{"error": message, "runs": []} for _ in argvs]
  return json.loads(lines[-1][len(RESULT):])


def check_commands(commands: list[str]) -> dict[str, str]:
  """{command: why it fails} for the commands that fail their check (the others pass)."""
  problems, pending = {}, []
  with tempfile.TemporaryDirectory() as work:
    for i, command in enumerate(commands):
      try:
        runs = python_runs(command, os.path.join(work, str(i)))
        for argv in runs:
          _target(argv)
        pending += [(command, argv) for argv in runs]
      except (CheckError, ValueError, subprocess.TimeoutExpired) as e:
        problems[command] = str(e)
  while pending:  # the recorded lines, then the commands that dry runs print
    groups = collections.defaultdict(list)
    for command, argv in pending:
      try:
        groups[_target(argv)].append((command, argv))
      except CheckError as e:
        problems.setdefault(command, str(e))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
      results = dict(zip(groups, pool.map(
          lambda t: _run_group(t, [argv for _, argv in groups[t]]), groups)))
    pending = []
    for target, items in groups.items():
      for (command, argv), result in zip(items, results[target]):
        if result["error"]:
          shown = "" if argv == python_args(command) else f" (it runs python {shlex.join(argv)})"
          problems.setdefault(command, result["error"] + shown)
        pending += [(command, run) for run in result["runs"]]
  return problems


def python_args(command: str) -> list[str] | None:
  """The arguments of a command that is itself a python command line, else None."""
  tokens = [t for t in shlex.split(command) if not re.match(r"[A-Za-z_]\w*=", t)]
  return tokens[1:] if tokens and tokens[0] in PYTHONS else None


# ---------------------------------------------------------------------------- in the subprocess


def _build(config: Any, target: str) -> None:
  """What training builds from its config before it starts (imagebrush_jax/train.py, without
  task_lists.resolve, which reads the data), and latent.load's check that a latent-space model
  names its autoencoder file (without reading it) for the programs that read it. The data is
  not read: a data set folder counts as built, an empty data.train_tasks as its tasks."""
  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.core import latent
  from imagebrush_jax.core import options as core_options
  from imagebrush_jax.data import options as data_options
  from imagebrush_jax.data import tfds_format
  from imagebrush_jax.training import config_migration
  from imagebrush_jax.training.options import LoopOptions
  tfds_format.is_built_dir = lambda path: True  # the data sets are not here
  config = config_migration.migrate(config).copy_and_resolve_references()
  if config.data.source == "tfds" and not tuple(config.data.train_tasks):
    with config.unlocked():  # as task_lists.resolve fills them in from the built data sets
      config.data.train_tasks = ("a task of the data set",)
  spec = core_options.ImageBrushSpec.from_config(config) if "model" in config else None
  data_options.from_config(config)
  LoopOptions.from_config(config)
  if spec is not None and spec.is_latent and target in READS_AUTOENCODER:
    latent._params_path(spec.model.autoencoder)  # pylint: disable=protected-access


def _quiet(call, *args) -> tuple[str, str]:
  """call(*args): its error ("" if none: a SystemExit of status 0 too) and what it printed on
  stdout; an exit's message is what it printed on stderr."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      call(*args)
  except SystemExit as e:
    if e.code not in (None, 0):
      return " ".join(err.getvalue().split()) or f"exit status {e.code}", out.getvalue()
  except Exception as e:  # pylint: disable=broad-except
    inner = e.args[0] if len(e.args) == 1 else e  # KeyError's message, not its repr
    inner = inner.args[0] if isinstance(inner, KeyError) and len(inner.args) == 1 else inner
    return f"{type(e).__name__}: {' '.join(str(inner).split())}"[:1500], out.getvalue()
  return "", out.getvalue()


class _Parsed(Exception):
  """Raised by the stubbed argparse parse_args once the arguments parsed: stops the program."""


def _check_argparse(name: str, path: str, module: bool, argv: list[str]) -> dict[str, Any]:
  """An argparse program run as __main__ with its parse_args stubbed to stop once the arguments
  parsed (a bad flag exits 2 with argparse's message)."""
  import argparse  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  parse_args = argparse.ArgumentParser.parse_args

  def parse_and_stop(parser, *args, **kwargs):
    parse_args(parser, *args, **kwargs)
    raise _Parsed

  argparse.ArgumentParser.parse_args = parse_and_stop
  sys.argv = [path, *argv[2 if module else 1:]]
  try:
    error, _ = (_quiet(runpy.run_module, name, None, "__main__", True) if module
                else _quiet(runpy.run_path, path, None, "__main__"))
  finally:
    argparse.ArgumentParser.parse_args = parse_args
  if error.startswith("_Parsed"):
    error = ""
  elif not error:
    error = f"{name} did not parse its arguments with argparse"
  return {"error": error, "runs": []}


def check_python(target: str, argvs: list[list[str]]) -> list[dict[str, Any]]:
  """In a process of its own: `target` run as __main__ with absl.app.run stubbed (it keeps
  main and the flags parser), then, for each of `argvs` (after the interpreter), its flags
  parsed, its config built and its dry run run. For each: the error ("" if none) and the
  command lines the dry run printed."""
  # pylint: disable=g-import-not-at-top
  import importlib.util
  import runpy
  from absl import app
  from absl import flags
  import ml_collections
  os.chdir(ROOT)
  sys.path.insert(0, ROOT)
  module = target.startswith("-m ")
  name = target.removeprefix("-m ")
  try:
    path = importlib.util.find_spec(name).origin if module else name
  except (ImportError, AttributeError):
    path = None
  if not path or not os.path.isfile(path):
    error = f"No module named {name}" if module else f"no script {name}"
  elif "argparse.ArgumentParser(" in open(path).read():
    return [_check_argparse(name, path, module, argv) for argv in argvs]
  elif not re.search(r"\b(app\.run|cli\.run\w*)\(", open(path).read()):
    error = f"{name} does not run absl.app.run: its flags cannot be checked"
  else:
    program = {}
    app.run = lambda main, argv=None, flags_parser=app.parse_flags_with_usage: program.update(
        main=main, parse=flags_parser)
    sys.argv = [path, *argvs[0][2 if module else 1:]]  # as it starts (some read it on import)
    error, _ = (_quiet(runpy.run_module, name, None, "__main__", True) if module
                else _quiet(runpy.run_path, path, None, "__main__"))
    error = error or ("" if program else f"{name} did not call absl.app.run")
  if error:
    return [{"error": error, "runs": []}] * len(argvs)

  def check(argv):
    if any(a == "--config" or a.startswith("--config=") for a in argv):
      for flag in [f for f in flags.FLAGS if f.startswith("config.")]:
        delattr(flags.FLAGS, flag)  # a config's override flags, defined when it is parsed
    flags.FLAGS.unparse_flags()
    sys.argv = [path, *argv[2 if module else 1:]]  # where a config flag reads its overrides
    program["parse"](sys.argv)
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if isinstance(config, ml_collections.ConfigDict):
      _build(config, target)
    elif config is not None and not isinstance(config, str):
      config.to_dict()  # a config file that did not load: its error comes when it is used
    if target in DRY_RUNS:
      for flag, value in DRY_RUNS[target][0].items():
        flags.FLAGS[flag].value = value
      program["main"]([path])

  results = []
  for argv in argvs:
    error, printed = _quiet(check, argv)
    runs = []
    for line in printed.splitlines() if target in DRY_RUNS and not error else ():
      record = json.loads(line) if line.startswith("{") else {}
      for key in DRY_RUNS[target][1]:  # a command line, or a list of them
        value = record.get(key) or []
        runs += [c[1:] for c in (value if value and isinstance(value[0], list) else [value]) if c]
    results.append({"error": error, "runs": runs})
  return results


def main(argv: list[str]) -> int:
  """Checks the commands given (default: PLAN's unrun ones) and prints each one's result; or,
  with --group TARGET, a group's checks (check_python) in this process."""
  if argv[1:2] == ["--group"]:
    results = check_python(argv[2], json.loads(sys.stdin.read()))
    print(RESULT + json.dumps(results), file=sys.__stdout__, flush=True)
    return 0
  commands = argv[1:]
  if not commands:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import readme_plan  # pylint: disable=g-import-not-at-top
    commands = [c for c, extra, _ in readme_plan.PLAN if extra is None]
  problems = check_commands(commands)
  for command in commands:
    print(f"{'FAIL' if command in problems else 'ok  '} {command}")
    if command in problems:
      print(f"     {problems[command]}")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
