"""Lists the synthetic task family (data/tasks.py): every registered task, global or object-level,
with what it does.

    python -m imagebrush_jax.tasks            # name, kind and description, one task a line
    python -m imagebrush_jax.tasks --list     # the registered names, one a line

Compositions of registered tasks are named 'a+b' (a first) and are not listed.
"""
from __future__ import annotations

from absl import flags

from imagebrush_jax.data import tasks
from imagebrush_jax.infra import cli


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.tasks` (defined when it runs, never at import)."""
  flags.DEFINE_bool("list", False, "Print the registered task names only, one a line.",
                    flag_values=flag_values)


def program(args: flags.FlagValues) -> None:
  """Prints the registered tasks as the parsed flags `args` say."""
  names = tasks.task_names()
  if args.list:
    print("\n".join(names))
    return
  width = max(map(len, names))
  for name in names:
    task = tasks.get_task(name)
    print(f"{name:<{width}}  {'global' if task.is_global else 'object'}  {task.doc}")


if __name__ == "__main__":
  cli.run_program(define_flags, program)
