"""The package's shape: no import cycles, imports at the top of modules, one
place that builds the model, one list of choices."""

import ast
import dataclasses
import pathlib

import pytest

from advisor_tf import cli_flags
from advisor_tf import config as config_lib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "advisor_tf"


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


def _imported(node, module, is_package):
  """advisor_tf modules named by one import statement."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.startswith("advisor_tf")]
  if isinstance(node, ast.ImportFrom):
    base = node.module or ""
    if node.level:
      anchor = module.split(".")
      anchor = anchor if is_package else anchor[:-1]
      anchor = anchor[:len(anchor) - node.level + 1]
      base = ".".join(anchor + ([base] if base else []))
    if not base.startswith("advisor_tf"):
      return []
    return [base] + [f"{base}.{a.name}" for a in node.names]
  return []


def _graph():
  names = dict(_modules())
  graph, nested = {}, []
  for module, path in names.items():
    tree = ast.parse(path.read_text())
    edges = set()
    for node in ast.walk(tree):
      targets = [t for t in _imported(node, module, path.name == "__init__.py")
                 if t in names and t != module]
      edges.update(targets)
      if targets and node not in tree.body:
        nested.append(f"{path.name}:{node.lineno}")
    graph[module] = edges
  return graph, nested


def test_the_import_graph_of_advisor_tf_has_no_cycle():
  graph, _ = _graph()
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, f"import cycles: {cycles}"
  assert len(graph) > 20  # The walk saw the package.


def test_no_function_level_imports_of_advisor_tf_modules():
  _, nested = _graph()
  assert not nested, f"imports inside functions: {nested}"


def test_the_model_is_constructed_in_one_place():
  sites = [f"{path.name}:{node.lineno}" for _, path in _modules()
           for node in ast.walk(ast.parse(path.read_text()))
           if isinstance(node, ast.Call)
           and getattr(node.func, "attr", getattr(node.func, "id", None))
           == "AdvisorModel"]
  assert sites == [sites[0]] and sites[0].startswith("builder.py"), sites


def test_every_choice_is_typed_once_and_read_by_flags_and_validation():
  fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
  from absl import flags
  for name, allowed in config_lib.CHOICES.items():
    assert name in fields
    assert tuple(flags.FLAGS[name].parser.enum_values) == tuple(allowed)
    with pytest.raises(ValueError, match=f"--{name}='nope' is not allowed"):
      dataclasses.replace(config_lib.TrainConfig(), **{name: "nope"}).validate()
  grouped = sum(cli_flags.GROUPS.values(), [])
  assert len(grouped) == len(set(grouped))
  assert fields <= set(grouped)
