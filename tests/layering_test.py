"""The package's layering, read from its source with `ast` (every import, also those inside
functions): model <- rl <- train, eval beside (model, rl's sampler, factory), data_pipelines
and text apart; no import cycle between modules."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vqathinker_jax", "data_pipelines")

# What each layer may import (itself included). factory is the config -> objects layer;
# app: the entry points and tools, which may import anything.
ALLOWED = {
    "data": {"data"},
    "text": {"text"},
    "model": {"model"},
    "factory": {"factory", "model", "text", "data"},
    "rl": {"rl", "model", "text", "data"},
    "eval": {"eval", "rl", "factory", "model", "text", "data"},
    "train": {"train", "eval", "rl", "factory", "model", "text", "data"},
    "app": {"app", "train", "eval", "rl", "factory", "model", "text", "data", "root"},
    "root": {"root"},
}


def layer(module: str) -> str:
  parts = module.split(".")
  if parts[0] == "data_pipelines":
    return "data"
  if len(parts) == 1:
    return "root"
  return {"model": "model", "text": "text", "rl": "rl", "eval": "eval", "train": "train",
          "factory": "factory"}.get(parts[1], "app")


def modules() -> dict[str, pathlib.Path]:
  out = {}
  for pkg in PACKAGES:
    for path in sorted((ROOT / pkg).rglob("*.py")):
      parts = list(path.relative_to(ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
  """The project modules ``name`` imports anywhere in its file."""
  is_pkg = path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package
        pkg = name.split(".") if is_pkg else name.split(".")[:-1]
        base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
      for a in node.names:  # `from pkg import submodule` imports the submodule
        found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
  return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
  mods = modules()
  return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
  return sorted(f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, deps in g.items()
                for b in deps if layer(b) not in ALLOWED[layer(a)])


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in g.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def test_the_checks_catch_an_upward_import_and_a_cycle():
  g = {"vqathinker_jax.model.llm": {"vqathinker_jax.rl.rollout"},
       "vqathinker_jax.rl.rollout": {"vqathinker_jax.model.llm"},
       "data_pipelines.perturb": set()}
  assert upward_imports(g) == ["vqathinker_jax.model.llm (model) imports "
                               "vqathinker_jax.rl.rollout (rl)"]
  assert cycles(g) == [["vqathinker_jax.model.llm", "vqathinker_jax.rl.rollout"]]


def test_graph_sees_local_and_from_imports():
  g = graph()
  assert "vqathinker_jax.model.internvl" in g["vqathinker_jax.model.hf_checkpoint"]
  assert "vqathinker_jax.train.trainer" in g["vqathinker_jax.main"]  # inside main()
  assert len(g) > 40


def test_imports_point_one_way():
  assert upward_imports(graph()) == []


def test_no_import_cycle():
  assert cycles(graph()) == []
