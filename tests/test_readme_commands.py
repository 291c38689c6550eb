"""Every command README.md and docs/*.md show is planned (tests/readme_plan.py): run as written
(a subprocess each) at tiny size, or not run, with the reason (tests/test_command_check.py checks
those). The commands that run are split into chains,
each run by one test: here the CPU demo's (make demo, then infer, export and evaluate on its
run) and the tiny latent run's; tests/test_readme_paper.py and tests/test_readme_training.py run
the others (separate files, which pytest-xdist can run on different workers).
"""
from __future__ import annotations

import glob
import json
import os
import sys

from PIL import Image
import pytest

import doc_commands
import readme_plan
from readme_plan import PLAN


def test_every_readme_command_is_planned():
  shown = set(readme_plan.readme_commands())
  planned = {command for command, _, _ in PLAN}
  assert shown - planned == set(), "README commands without a test"
  assert planned - shown == set(), "planned commands the README no longer shows"
  # Each command that runs belongs to a chain, and each chain is run by a test.
  chains = {note for _, extra, note in PLAN if extra is not None}
  assert chains == set(readme_plan.CHAINS), "commands in no chain, or chains with no command"
  tests = "".join(open(path).read() for path in glob.glob(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_readme_*.py")))
  for chain in chains:
    assert f'run_chain("{chain}"' in tests, f"no test runs the {chain!r} commands"
  for command, extra, note in PLAN:
    assert note, command  # the chain, or why the command does not run here


def test_docs_show_no_command_outside_command_blocks():
  """README.md and docs/*.md show commands only in command blocks (which the test above holds
  to PLAN): no indented code block, no unplanned command in an inline code span, no code block
  of an unknown kind."""
  problems = doc_commands.lint(command for command, _, _ in PLAN)
  assert not problems, "\n".join(problems)


SAMPLE = """# Sample

```bash
.venv/bin/python -m imagebrush_jax.train --config configs/default.py \\
    --workdir runs/x  # trains
# a comment line
make demo
```

```text
runs/x/checkpoints/
```

```json
{"step": 2}
```

~~~
make app
~~~

Planned: `make demo`; a flag `--config.train.batch_size=8`, a path `launch/local.sh`; a
command that no block shows: `.venv/bin/python -m imagebrush_jax.infer
--workdir runs/x`, and `NUM_PROCESSES=2 launch/local.sh infer --workdir runs/x`.

- a list item

    its indented continuation

A paragraph.

    an indented code block
    `make test` in it is shown as is
"""


def test_commands_and_lint_of_a_markdown_sample():
  """Command blocks (bash, none) give their commands, continuations joined and comments
  dropped; text and json blocks none; another kind is an error naming its line. The lint finds
  the indented code block and the unplanned inline commands, not the flag, path or list item."""
  assert [c for _, _, c in doc_commands.markdown_commands(SAMPLE, "s.md")] == [
      ".venv/bin/python -m imagebrush_jax.train --config configs/default.py --workdir runs/x",
      "make demo", "make app"]
  with pytest.raises(ValueError, match=r"s\.md:3: code block of unknown kind 'bsh'"):
    doc_commands.markdown_commands(SAMPLE.replace("```bash", "```bsh"), "s.md")
  assert doc_commands.lint_markdown(SAMPLE, ["make demo"], "s.md") == [
      "s.md:23: command in an inline code span, not in a command block (run or checked by the "
      "tests): .venv/bin/python -m imagebrush_jax.infer --workdir runs/x",
      "s.md:24: command in an inline code span, not in a command block (run or checked by the "
      "tests): NUM_PROCESSES=2 launch/local.sh infer --workdir runs/x",
      "s.md:32: indented code block (use a fenced ```bash or ```text block): an indented code "
      "block"]
  assert doc_commands.lint_markdown(SAMPLE.replace("```json", "```jsn"), ["make demo"],
                                    "s.md")[0] == "s.md:14: code block of unknown kind 'jsn'"


def test_demo_commands(tmp_path):
  """make demo, the demo run trained further as written (it has finished: it stops at once),
  edited (one edit, a manifest, an exported file) and evaluated."""
  work = str(tmp_path)
  readme_plan.make_inputs(work)
  readme_plan.run_chain("demo", work)
  assert Image.open(os.path.join(work, "out.png")).size == (35, 27)
  metrics = json.load(open(os.path.join(work, "metrics.json")))
  assert metrics["num_examples"] == 8 and metrics["step"] == 2


def test_latent_tiny_commands(tmp_path):
  """The tiny autoencoder trained, then latent_tiny in its latent space."""
  work = str(tmp_path)
  readme_plan.make_inputs(work)
  readme_plan.run_chain("latent_tiny", work)


if __name__ == "__main__":
  print("\n".join(readme_plan.readme_commands()))
  sys.exit(0)
