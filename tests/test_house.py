"""The shape of the package: no import cycles, modules of one job (and so of modest length), and a README
layout table that matches the tree. Read with ast: nothing is imported."""
import ast
import graphlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxcap")
# Modules allowed past ~350 lines because their one job needs it: none today.
LONG_OK: set[str] = set()


def modules() -> dict[str, str]:
  """Dotted name -> file for every module and package of jaxcap."""
  out = {}
  for d, dirs, files in os.walk(PACKAGE):
    dirs[:] = [x for x in dirs if x != "__pycache__"]
    for f in files:
      if f.endswith(".py"):
        parts = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(d, f)
  return out


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
  """The jaxcap modules `name` imports, at any depth (inside functions too), with the packages that importing
  them starts, less `name`'s own packages (already started when it runs)."""
  own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
  if path.endswith("__init__.py"):
    own.add(name)
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for _ in range(node.level - 1):
          package = package.rpartition(".")[0]
        base = ".".join(x for x in (package, node.module) if x)
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in known:
        t = t.rpartition(".")[0]
      parts = t.split(".") if t else []
      found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own - {name}
  return found


def test_no_import_cycles():
  known = modules()
  graph = {name: imports(name, path, known) for name, path in known.items()}
  try:
    list(graphlib.TopologicalSorter(graph).static_order())
  except graphlib.CycleError as e:
    raise AssertionError(f"import cycle: {' -> '.join(reversed(e.args[1]))}") from None


def test_the_check_sees_a_cycle_and_a_lazy_import(tmp_path):
  # The check itself: a lazy import back up is a cycle too.
  known = {"jaxcap.a": "a", "jaxcap.b": "b", "jaxcap": "init"}
  (tmp_path / "a.py").write_text("from jaxcap import b\n")
  (tmp_path / "b.py").write_text("def f():\n  from jaxcap.a import g\n")
  graph = {n: imports(n, str(tmp_path / f"{n[-1]}.py"), known) for n in ("jaxcap.a", "jaxcap.b")}
  assert graph == {"jaxcap.a": {"jaxcap.b"}, "jaxcap.b": {"jaxcap.a"}}


def test_modules_stay_short():
  long = {name: n for name, path in modules().items() if (n := sum(1 for _ in open(path))) > 350}
  assert set(long) <= LONG_OK, f"modules over 350 lines (split them, or say why in LONG_OK): {long}"


def test_readme_layout_table_matches_the_tree():
  readme = open(os.path.join(ROOT, "README.md")).read()
  table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
  named = set(re.findall(r"`([\w./]+)`", table))
  # Every path the table names exists; every module and package of jaxcap is named (in full or by its file
  # name in a row that starts with its folder).
  paths = {p for p in named if "/" in p or p.endswith(".py")}
  missing = sorted(p for p in paths if "/" in p and not os.path.exists(os.path.join(ROOT, p)))
  assert not missing, f"the README layout names paths that do not exist: {missing}"
  top = sorted(f for f in os.listdir(PACKAGE) if f != "__pycache__" and f != "__init__.py")
  unnamed = [f for f in top if not ({f"jaxcap/{f}", f"jaxcap/{f}/", f} & named)]
  assert not unnamed, f"jaxcap entries the README layout does not name: {unnamed}"
