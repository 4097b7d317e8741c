"""The layout rules of issue 17, read from the source (ast over dpo_ray/**/*.py; nothing of dpo_ray is imported
here): only the stage modules import Ray, no import circle, empty __init__.py files, no cross-module use of a
private name, no file over 400 lines and no function over 80. Each checker takes a tree, returns every violation
as one ``path:line what`` string, and is shown to catch a planted violation in a tmp tree.

The transitive half of the Ray rule (a pure module imported in a fresh process loads no Ray) runs in one
subprocess; the Ray modules themselves are imported by tests/ray/test_ray_modules_import.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "dpo_ray"
# Relative to dpo_ray/; fnmatch's * spans folders, so */stage.py is any stage's one Ray module.
# console.py starts Ray with the quiet settings (ray.init, its loggers): run.py and tune/driver.py share it.
RAY_MODULES = ("*/stage.py", "train/loop.py", "train/checkpoint.py", "train/trainer.py", "tune/driver.py", "run.py",
               "tracking.py", "console.py", "online/rounds.py")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS = {("train/loop.py", "train_loop_per_worker")}  # the per-worker loop, read as named steps
# Where a private name of dpo_ray must not be reached from another module. Tests too: none needs one, and a
# test that pins a private helper pins the layout this file keeps movable.
PRIVATE_SCOPES = ("dpo_ray", "pipelines", "bench", "tests")


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _sources(pkg: Path) -> dict[str, Path]:
    """{path relative to the package, posix: file} for every .py under it."""
    return {p.relative_to(pkg).as_posix(): p for p in sorted(pkg.rglob("*.py"))}


def _module_name(pkg: Path, rel: str) -> str:
    parts = [pkg.name, *rel.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(pkg: Path) -> dict[str, Path]:
    """{dotted module name: file}; a package is its __init__.py."""
    return {_module_name(pkg, rel): path for rel, path in _sources(pkg).items()}


def _imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import at any depth; `import a.b` has no names."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding `module`
                package = module.split(".") if is_package else module.split(".")[:-1]
                head = package[: len(package) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            yield node.lineno, base, [alias.name for alias in node.names]


def _is_ray(name: str) -> bool:
    return name == "ray" or name.startswith("ray.")


def _may_import_ray(rel: str) -> bool:
    return any(fnmatchcase(rel, pattern) for pattern in RAY_MODULES)


# ---------------------------------------------------------------- checkers

def ray_imports(pkg: Path) -> list[str]:
    """`import ray...` / `from ray... import` (at any depth) in a file outside RAY_MODULES."""
    found = []
    for rel, path in _sources(pkg).items():
        if _may_import_ray(rel):
            continue
        module = _module_name(pkg, rel)
        for line, name, _ in _imports(_parse(path), module, rel.endswith("__init__.py")):
            if _is_ray(name):
                found.append(f"{pkg.name}/{rel}:{line} imports {name}")
    return found


def pure_modules(pkg: Path) -> list[str]:
    return [_module_name(pkg, rel) for rel in _sources(pkg) if not _may_import_ray(rel)]


_FIRST_LOADER = """
import importlib, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
    if sys.argv[1] in sys.modules:
        print('LOADER', name)
        break
"""


def transitive_loaders(root: Path, modules: list[str], watched: str = "ray") -> list[str]:
    """Every one of `modules` whose import loads `watched` (sys.path[0] = root): import them in order in a fresh
    process until one loads it, then go on from the next one in another; one process when none does. A module
    judged in a process that had already imported clean ones imports no more than it would alone."""
    found = []
    while modules:
        proc = subprocess.run([sys.executable, "-c", _FIRST_LOADER, watched, *modules], cwd=root, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"importing {modules} failed: {proc.stderr[-2000:]}"
        loaders = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("LOADER ")]
        if not loaders:
            break
        loader = loaders[-1]
        found.append(f"{loader} loads {watched} when imported")
        modules = modules[modules.index(loader) + 1:]
    return found


def import_cycles(pkg: Path) -> list[str]:
    """One line per import circle among the package's modules (imports inside functions count)."""
    modules = _modules(pkg)
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}  # module -> {imported module: line}
    for module, path in modules.items():
        for line, base, names in _imports(_parse(path), module, path.name == "__init__.py"):
            targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a.b.c: the module a.b
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges[module].setdefault(target, line)
    return [_format_cycle(cycle, edges, modules, pkg.parent) for cycle in _cycles(edges)]


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a node list, first node repeated at the end) per strongly connected component larger than one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's SCC; the package graph is tens of nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_path_back(min(c), c, edges) for c in components]


def _path_back(start: str, component: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """Shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(edges[node]):
                if nxt not in component:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _format_cycle(cycle: list[str], edges: dict[str, dict[str, int]], modules: dict[str, Path], root: Path) -> str:
    steps = [f"{modules[a].relative_to(root).as_posix()}:{edges[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:])]
    return "import circle " + " -> ".join(cycle) + " (" + "; ".join(steps) + ")"


def nonempty_inits(pkg: Path) -> list[str]:
    return [f"{pkg.name}/{rel}:1 is not empty" for rel, path in _sources(pkg).items()
            if rel.rsplit("/", 1)[-1] == "__init__.py" and path.read_text().strip()]


def private_uses(pkg: Path, files: list[Path]) -> list[str]:
    """`from <pkg>.x import _name` and `<module>._name` on an imported <pkg> module, in `files` (not the owner)."""
    modules = _modules(pkg)
    root = pkg.parent
    found = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        own = _module_name(pkg, path.relative_to(pkg).as_posix()) if path.is_relative_to(pkg) else ""
        tree = _parse(path)
        bound: dict[str, str] = {}  # local name -> the <pkg> module it is bound to
        for line, base, names in _imports(tree, own or "__main__", path.name == "__init__.py"):
            if base not in modules:
                continue
            if not names:  # import a.b.c binds `a`; `import a.b.c as m` is seen below
                bound[base.split(".")[0]] = base.split(".")[0]
            for name in names:
                if name.startswith("_") and not name.startswith("__") and base != own:
                    found.append(f"{rel}:{line} imports {base}.{name}")
                if f"{base}.{name}" in modules:
                    bound[name] = f"{base}.{name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
            if isinstance(node, ast.ImportFrom):  # `from a import b as c`: c is a.b
                bound.update({a.asname: f"{node.module}.{a.name}" for a in node.names
                              if a.asname and f"{node.module}.{a.name}" in modules})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                target = _dotted(node.value, bound)
                if target in modules and target != own:
                    found.append(f"{rel}:{node.lineno} uses {target}.{node.attr}")
    return sorted(set(found))


def _dotted(node: ast.expr, bound: dict[str, str]) -> str:
    """The module an expression `a.b.c` names, through the file's import bindings ('' for anything else)."""
    if isinstance(node, ast.Name):
        return bound.get(node.id, "")
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value, bound)
        return f"{head}.{node.attr}" if head else ""
    return ""


def long_files(pkg: Path) -> list[str]:
    return [f"{pkg.name}/{rel}:{MAX_FILE_LINES + 1} has {n} lines (at most {MAX_FILE_LINES})" for rel, path in _sources(pkg).items()
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES]


def long_functions(pkg: Path) -> list[str]:
    found = []
    for rel, path in _sources(pkg).items():
        for qualname, node in _functions(_parse(path)):
            length = node.end_lineno - node.lineno + 1  # def line to last line, decorators not counted
            if length > MAX_FUNCTION_LINES and (rel, qualname) not in LONG_FUNCTIONS:
                found.append(f"{pkg.name}/{rel}:{node.lineno} {qualname} has {length} lines (at most {MAX_FUNCTION_LINES})")
    return found


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every def / async def with its qualified name (methods and nested functions included)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _report(found: list[str], rule: str) -> str:
    return f"{len(found)} violation(s) of '{rule}':\n" + "\n".join(found)


# ---------------------------------------------------------------- the rules on dpo_ray

def test_only_the_stage_modules_import_ray() -> None:
    found = ray_imports(PKG)
    assert not found, _report(found, f"only {', '.join(RAY_MODULES)} import ray")


def test_pure_modules_load_no_ray_in_a_fresh_process() -> None:
    found = transitive_loaders(REPO, pure_modules(PKG))
    assert not found, _report(found, "a module outside the Ray set loads no Ray, even through its imports")


def test_no_import_circle() -> None:
    found = import_cycles(PKG)
    assert not found, _report(found, "no import circle inside dpo_ray")


def test_every_init_is_empty() -> None:
    found = nonempty_inits(PKG)
    assert not found, _report(found, "every __init__.py is empty")


def test_no_cross_module_private_name() -> None:
    files = [p for scope in PRIVATE_SCOPES for p in sorted((REPO / scope).rglob("*.py"))]
    found = private_uses(PKG, files)
    assert not found, _report(found, "no cross-module use of a private name")


def test_files_and_functions_are_short() -> None:
    found = long_files(PKG) + long_functions(PKG)
    assert not found, _report(found, f"files <= {MAX_FILE_LINES} lines, functions <= {MAX_FUNCTION_LINES}")


# ---------------------------------------------------------------- each checker catches a planted violation

def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_ray_import_check_catches_a_nested_import_outside_the_ray_modules(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "", "pkg/run.py": "import ray\n", "pkg/data/stage.py": "from ray import data\n",
        "pkg/screen.py": "import os\n\ndef f():\n    if os:\n        from ray.train import report\n",
        "pkg/data/parse.py": "import ray_helpers\nfrom rayon import x\n",  # names that start like ray are not ray
        "pkg/stage.py": "import ray.data\n",  # */stage.py needs a folder: the top-level stage.py is not a stage
    })
    assert ray_imports(pkg) == ["pkg/screen.py:5 imports ray.train", "pkg/stage.py:1 imports ray.data"]


def test_transitive_check_names_each_module_that_loads_the_watched_one(tmp_path: Path) -> None:
    _tree(tmp_path, {"heavy.py": "", "pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "import heavy\n",
                     "pkg/c.py": "def f():\n    import heavy\n"})
    assert transitive_loaders(tmp_path, ["pkg.c"], watched="heavy") == []
    assert transitive_loaders(tmp_path, ["pkg.c", "pkg.a", "pkg.b"], watched="heavy") == [
        "pkg.a loads heavy when imported", "pkg.b loads heavy when imported"]


def test_cycle_check_finds_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "", "pkg/a.py": "from pkg.sub import b\n", "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from . import c\n", "pkg/sub/c.py": "def f():\n    import pkg.a\n",
        "pkg/d.py": "from pkg.a import thing\nimport pkg.sub.b\n",  # into the circle, not part of it
    })
    assert import_cycles(pkg) == [
        "import circle pkg.a -> pkg.sub.b -> pkg.sub.c -> pkg.a "
        "(pkg/a.py:1 imports pkg.sub.b; pkg/sub/b.py:1 imports pkg.sub.c; pkg/sub/c.py:2 imports pkg.a)"]
    (pkg / "sub" / "c.py").write_text("def f():\n    return 1\n")
    _parse.cache_clear()
    assert import_cycles(pkg) == []


def test_init_check_catches_a_docstring(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {"pkg/__init__.py": "\n", "pkg/sub/__init__.py": '"""Re-exports."""\n', "pkg/x.py": "y = 1\n"})
    assert nonempty_inits(pkg) == ["pkg/sub/__init__.py:1 is not empty"]


def test_private_check_catches_imports_and_attributes_of_another_module(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "", "pkg/a.py": "_x = 1\n\ndef _f():\n    return _x\n\nclass K:\n    _slot = 1\n",
        "pkg/b.py": "from pkg.a import _f, K\nimport pkg.a\nimport pkg.a as alias\n\n"
                    "def g():\n    return pkg.a._x + alias._x + K()._slot + K.__name__.__len__()\n",
        "scripts/s.py": "from pkg import a\nfrom pkg import a as m\nprint(a._f(), m._x, a.__doc__)\n",
    })
    files = sorted(tmp_path.rglob("*.py"))
    assert private_uses(pkg, files) == [
        "pkg/b.py:1 imports pkg.a._f", "pkg/b.py:6 uses pkg.a._x",
        "scripts/s.py:3 uses pkg.a._f", "scripts/s.py:3 uses pkg.a._x"]


def test_length_checks_catch_a_long_file_and_a_long_method(tmp_path: Path) -> None:
    def body(lines: int, indent: str = "    ") -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))

    pkg = _tree(tmp_path, {
        "pkg/__init__.py": "", "pkg/big.py": "y = 0\n" * (MAX_FILE_LINES + 1), "pkg/fits.py": "y = 0\n" * MAX_FILE_LINES,
        "pkg/m.py": f"class C:\n    async def go(self):\n{body(MAX_FUNCTION_LINES, ' ' * 8)}",  # def line + 80 = 81
        "pkg/train/loop.py": f"def train_loop_per_worker():\n{body(200)}\ndef other():\n{body(MAX_FUNCTION_LINES)}",
        "pkg/ok.py": f"def fits():\n{body(MAX_FUNCTION_LINES - 1)}",
    })
    assert long_files(pkg) == [f"pkg/big.py:{MAX_FILE_LINES + 1} has {MAX_FILE_LINES + 1} lines (at most {MAX_FILE_LINES})"]
    assert long_functions(pkg) == [f"pkg/m.py:2 C.go has 81 lines (at most {MAX_FUNCTION_LINES})",
                                   f"pkg/train/loop.py:203 other has 81 lines (at most {MAX_FUNCTION_LINES})"]


@pytest.mark.parametrize("check", [ray_imports, import_cycles, nonempty_inits, long_files, long_functions])
def test_a_clean_tree_passes(check: Callable[[Path], list[str]], tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import os\n\n\ndef f():\n    from pkg import b\n",
                           "pkg/b.py": "X = 1\n", "pkg/data/stage.py": "import ray\n"})
    assert check(pkg) == []
