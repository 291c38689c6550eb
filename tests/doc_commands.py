"""The commands the documentation shows (README.md and docs/*.md), for the README tests
(tests/readme_plan.py), and lint(): markdown that would show a command the tests cannot see (an
indented code block, a command in an inline code span that no test runs or checks).

A fenced block whose info string is bash, sh, shell, console or empty holds commands (one a
line, `\\` continuations joined, comments dropped); text and json blocks hold file layouts and
output samples; any other info string is an error, so that a typo (```bsh) hides no command.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Iterable, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("bash", "sh", "shell", "console", "")
NOT_COMMANDS = ("text", "json")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)")
LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
# A code span that reads as a command: a program, after VAR=value settings, with arguments.
COMMAND_SPAN = re.compile(r"^(\w+=\S+ )*(\.venv/bin/python |python3? |make |hf |gcloud |"
                          r"(launch|benchmarks)/\S+ )")


def doc_paths(root: str = ROOT) -> list[str]:
  """README.md, then docs/*.md, sorted."""
  return [os.path.join(root, "README.md"), *sorted(glob.glob(os.path.join(root, "docs", "*.md")))]


def _blocks(text: str, name: str) -> Iterator[tuple[int, str | None, list[str]]]:
  """(line number of the opening fence, info string, lines) of every fenced block, and
  (line, None, [line]) for every line outside them."""
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if not m:
      yield i + 1, None, [lines[i]]
      i += 1
      continue
    indent, fence, info = len(m.group(1)), m.group(2), m.group(3).lower()
    body, j = [], i + 1
    while j < len(lines) and not re.fullmatch(rf"\s*{fence[0]}{{{len(fence)},}}\s*", lines[j]):
      body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j].lstrip())
      j += 1
    if j == len(lines):
      raise ValueError(f"{name}:{i + 1}: a code block that is never closed")
    yield i + 1, info, body
    i = j + 1


def block_commands(body: list[str]) -> list[str]:
  """The commands of a command block: continuations joined, comments dropped, whitespace
  collapsed."""
  commands = []
  for line in "\n".join(body).replace("\\\n", " ").splitlines():
    line = re.sub(r"\s+#\s.*$", "", line).strip()
    if line and not line.startswith("#"):
      commands.append(re.sub(r"\s+", " ", line))
  return commands


def markdown_commands(text: str, name: str = "<markdown>") -> list[tuple[str, int, str]]:
  """(name, line, command) of every command in the fenced command blocks of `text`;
  ValueError for a block of an unknown kind."""
  found = []
  for line, info, body in _blocks(text, name):
    if info is None or info in NOT_COMMANDS:
      continue
    if info not in COMMANDS:
      raise ValueError(f"{name}:{line}: code block of unknown kind {info!r} (commands: "
                       f"{', '.join(k for k in COMMANDS if k)} or none; not run: "
                       f"{', '.join(NOT_COMMANDS)})")
    found += [(name, line, c) for c in block_commands(body)]
  return found


def commands(paths: Iterable[str] | None = None) -> list[str]:
  """The commands of the documentation's command blocks, in order (README.md, then docs/)."""
  return [c for path in (doc_paths() if paths is None else paths)
          for _, _, c in markdown_commands(open(path).read(), os.path.relpath(path, ROOT))]


def lint_markdown(text: str, planned: Iterable[str], name: str = "<markdown>") -> list[str]:
  """`name:line: what` for each fenced block of an unknown kind, indented code block (a line
  indented 4+ spaces after a blank line, outside fenced blocks and list items) and inline code
  span that reads as a command but is none of `planned`."""
  planned = {re.sub(r"\s+", " ", c.strip()) for c in planned}
  prose, problems = {}, []  # prose: line number: text, of the lines outside fenced blocks
  for line, info, body in _blocks(text, name):
    if info is None:
      prose[line] = body[0]
    elif info not in COMMANDS + NOT_COMMANDS:
      problems.append((line, f"code block of unknown kind {info!r}"))
  in_list, in_block, literal = False, False, set()
  for line, text_line in prose.items():
    if LIST_ITEM.match(text_line):
      in_list = True
    elif text_line.strip() and not text_line[0].isspace():
      in_list = False  # a paragraph, heading or table at the top level ends the list
    after_blank = line - 1 in prose and not prose[line - 1].strip()
    indented = text_line.startswith("    ")
    if after_blank and indented and not in_block and not in_list:
      in_block = True
      problems.append((line, f"indented code block (use a fenced ```bash or ```text block): "
                             f"{text_line.strip()}"))
    in_block = in_block and (indented or not text_line.strip())
    if in_block:
      literal.add(line)  # shown as is: no code spans in it
  # Code spans, which may wrap lines within a paragraph (fenced blocks count as blank lines).
  lines = text.splitlines()
  flat = "\n".join("" if i in literal else prose.get(i, "") for i in range(1, len(lines) + 1))
  for m in re.finditer(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", flat, re.S):
    command = re.sub(r"\s+", " ", m.group(2).strip())
    if COMMAND_SPAN.match(command) and command not in planned:
      problems.append((flat.count("\n", 0, m.start()) + 1, f"command in an inline code span, "
                       f"not in a command block (run or checked by the tests): {command}"))
  return [f"{name}:{line}: {what}" for line, what in sorted(problems)]


def lint(planned: Iterable[str], paths: Iterable[str] | None = None) -> list[str]:
  """lint_markdown of every documentation file."""
  planned = list(planned)
  return [p for path in (doc_paths() if paths is None else paths)
          for p in lint_markdown(open(path).read(), planned, os.path.relpath(path, ROOT))]
