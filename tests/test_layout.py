"""The package's structure: thin entry points at the top, subpackages below them with no import
cycle between them (nor between modules), diffusion/ pure, the core model free of plug-ins."""
import ast
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "imagebrush_jax")


def import_graph() -> dict[str, set[str]]:
  """module -> the imagebrush_jax modules it imports anywhere in its source (lazy ones too)."""
  modules = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
        modules[module.removesuffix(".__init__")] = path
  graph = {}
  for module, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imagebrush_jax"):
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          deps.add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name.startswith("imagebrush_jax"))
    graph[module] = {d for d in deps if d in modules and d != module}
  return graph


def reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for dep in graph[todo.pop()]:
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def test_no_import_cycles():
  graph = import_graph()
  cycles = sorted(m for m in graph if m in reachable(graph, m))
  assert not cycles, f"modules on an import cycle: {cycles}"


def test_diffusion_imports_only_diffusion():
  graph = import_graph()
  for module in (m for m in graph if m.startswith("imagebrush_jax.diffusion")):
    outside = {d for d in graph[module] if not d.startswith("imagebrush_jax.diffusion")}
    assert not outside, (module, outside)


def test_core_model_and_blocks_know_no_plugin():
  graph = import_graph()
  for module in ("imagebrush_jax.core.model", "imagebrush_jax.core.grid",
                 "imagebrush_jax.models.unet", "imagebrush_jax.models.prompt_encoder"):
    assert not any(d.startswith("imagebrush_jax.core.plugins")
                   for d in reachable(graph, module)), module


def _package(module: str) -> str:
  """imagebrush_jax.<package>.x -> <package>; a top-level module is its own entry point."""
  return module.split(".")[1] if module.count(".") else ""


def entry_points(graph) -> set[str]:
  """The top-level modules of imagebrush_jax: the programs (every one has a __main__ block)."""
  return {m for m in graph if m.count(".") == 1 and
          not os.path.isdir(os.path.join(ROOT, m.split(".")[1]))}


def test_entry_points_are_the_top_level_modules_and_no_library_imports_one():
  graph = import_graph()
  programs = entry_points(graph)
  assert {"imagebrush_jax.train", "imagebrush_jax.infer", "imagebrush_jax.build_data"} <= programs
  for module in programs:
    source = open(os.path.join(ROOT, module.split(".")[1] + ".py")).read()
    assert 'if __name__ == "__main__":' in source, f"{module} is at the top but is no program"
  for module, deps in graph.items():
    if module not in programs:
      assert not deps & programs, f"library module {module} imports {sorted(deps & programs)}"


def test_no_import_cycle_between_packages():
  graph = import_graph()
  programs = entry_points(graph)
  packages: dict[str, set[str]] = {}
  for module, deps in graph.items():
    if module in programs or module == "imagebrush_jax":
      continue
    for dep in deps:
      if _package(dep) != _package(module):
        packages.setdefault(_package(module), set()).add(_package(dep))
  packages.setdefault("", set())
  package_graph = {p: packages.get(p, set()) for p in packages}
  for deps in list(package_graph.values()):
    for dep in deps:
      package_graph.setdefault(dep, set())
  cycles = sorted(p for p in package_graph if p in reachable(package_graph, p))
  assert not cycles, f"packages on an import cycle: {cycles} ({package_graph})"


def test_only_the_programs_have_a_main_block():
  """A library module (anything below a subpackage) is no program: its command is a program at
  the top (e.g. python -m imagebrush_jax.tasks, not imagebrush_jax.data.tasks)."""
  for folder, _, names in os.walk(ROOT):
    if folder == ROOT:
      continue
    for name in (n for n in names if n.endswith(".py")):
      with open(os.path.join(folder, name)) as f:
        tree = ast.parse(f.read())
      main_blocks = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.If)
                     and isinstance(node.test, ast.Compare)
                     and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"]
      assert not main_blocks, f"{os.path.join(folder, name)}:{main_blocks[0]} is a __main__ block"


def test_importing_every_program_defines_no_flag():
  """Programs define their flags when they run, so that they import together (as tests do)."""
  programs = sorted(entry_points(import_graph()))
  script = ("import sys; from absl import flags; "
            f"[__import__(m) for m in {programs!r}]; "
            "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() "
            "if 'imagebrush_jax' in m))")
  proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(ROOT),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
