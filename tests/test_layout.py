"""The package's structure: no import cycles, diffusion/ pure, the core model free of variants."""
import ast
import os

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


def test_core_model_and_blocks_know_no_variant():
  graph = import_graph()
  for module in ("imagebrush_jax.imagebrush.model", "imagebrush_jax.imagebrush.grid",
                 "imagebrush_jax.models.unet", "imagebrush_jax.models.prompt_encoder"):
    assert not any(d.startswith("imagebrush_jax.variants") for d in reachable(graph, module)), \
        module
