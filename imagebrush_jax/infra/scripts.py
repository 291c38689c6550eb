"""The installed console scripts (pyproject.toml's [project.scripts]): each runs one program
module exactly as `python -m imagebrush_jax.<program>` does, so

    imagebrush-train --config configs/cpu_demo.py --workdir runs/demo

is `python -m imagebrush_jax.train --config configs/cpu_demo.py --workdir runs/demo`, from any
working directory once the package is installed.
"""
from __future__ import annotations

import runpy
from typing import Callable

# console script -> program module (each has an `if __name__ == "__main__":` block)
PROGRAMS = {
    "imagebrush-train": "imagebrush_jax.train",
    "imagebrush-train-autoencoder": "imagebrush_jax.train_autoencoder",
    "imagebrush-infer": "imagebrush_jax.infer",
    "imagebrush-evaluate": "imagebrush_jax.evaluate",
    "imagebrush-app": "imagebrush_jax.app",
    "imagebrush-export": "imagebrush_jax.export",
    "imagebrush-convert": "imagebrush_jax.convert",
    "imagebrush-build-data": "imagebrush_jax.build_data",
    "imagebrush-demo-report": "imagebrush_jax.demo_report",
    "imagebrush-autoencode": "imagebrush_jax.autoencode",
    "imagebrush-summary": "imagebrush_jax.summary",
    "imagebrush-preview": "imagebrush_jax.preview",
    "imagebrush-tasks": "imagebrush_jax.tasks",
    "imagebrush-hardware": "imagebrush_jax.hardware",
}


def run_program(module: str) -> None:
  """Runs `module` as the main program, as `python -m module` does (sys.argv[0] and
  sys.modules["__main__"] are the module's while it runs, so worker processes started by spawn
  import the program module, not the console script)."""
  runpy.run_module(module, run_name="__main__", alter_sys=True)


def _entry_point(module: str) -> Callable[[], None]:
  def main() -> None:
    run_program(module)

  main.__doc__ = f"`python -m {module}`."
  return main


train = _entry_point(PROGRAMS["imagebrush-train"])
train_autoencoder = _entry_point(PROGRAMS["imagebrush-train-autoencoder"])
infer = _entry_point(PROGRAMS["imagebrush-infer"])
evaluate = _entry_point(PROGRAMS["imagebrush-evaluate"])
app = _entry_point(PROGRAMS["imagebrush-app"])
export = _entry_point(PROGRAMS["imagebrush-export"])
convert = _entry_point(PROGRAMS["imagebrush-convert"])
build_data = _entry_point(PROGRAMS["imagebrush-build-data"])
demo_report = _entry_point(PROGRAMS["imagebrush-demo-report"])
autoencode = _entry_point(PROGRAMS["imagebrush-autoencode"])
summary = _entry_point(PROGRAMS["imagebrush-summary"])
preview = _entry_point(PROGRAMS["imagebrush-preview"])
tasks = _entry_point(PROGRAMS["imagebrush-tasks"])
hardware = _entry_point(PROGRAMS["imagebrush-hardware"])
