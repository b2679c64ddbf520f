"""The layering of lmforge, read from its own imports (inside functions too) and kept by tests.

Two layers: the library (models, data, tasks, train, infer, interop, compress, explain, the leaves) and the
application on top (app/, api.py, cli.py, serve/). The library never imports the application or the package
root, and no import cycle joins two modules or two packages. `python tests/test_layers.py` prints the counts
(cycles, upward imports, function-level imports, library functions taking `lm`) that docs/ARCHITECTURE.md
quotes. No library function has a parameter named `lm`: the library takes a Bundle or its parts, never the facade.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmforge"

# the application: everything that orchestrates the library for a user. Every other part of the package (a new
# one included) is library and may not import these.
APPLICATION = {"(root)", "app", "api", "cli", "__main__", "serve"}
FORBIDDEN_FROM_LIBRARY = {"app", "api", "cli", "__main__"}  # plus the package root itself (lmforge/__init__.py)


@dataclass(frozen=True)
class Import:
    """One internal import: who imports what, at which line, and whether it runs inside a function."""

    source: str  # dotted module name, e.g. lmforge.data.corpus
    target: str  # dotted module name (a package means its __init__)
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    """lmforge/data/corpus.py -> lmforge.data.corpus; a package's __init__.py -> the package's name."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool = False):
    """Yield (import node, in_function), skipping `if TYPE_CHECKING:` blocks (they never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _walk(other, in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _resolve(node: ast.ImportFrom | ast.Import, source: str, is_package: bool, modules: dict) -> list[str]:
    """The internal modules an import statement loads (the package for `from pkg import name`, the submodule for
    `from pkg import submodule`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "lmforge"]
    if node.level:
        base = source.split(".") if is_package else source.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    if stem.split(".")[0] != "lmforge":
        return []
    targets = [f"{stem}.{alias.name}" for alias in node.names if f"{stem}.{alias.name}" in modules]
    if len(targets) < len(node.names):
        targets.append(stem)
    return targets


def internal_imports() -> list[Import]:
    """Every import of one lmforge module by another, with its line and whether it sits inside a function."""
    modules = all_modules()
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, in_function in _walk(tree):
            for target in _resolve(node, name, path.name == "__init__.py", modules):
                if target != name:
                    found.append(Import(name, target, node.lineno, in_function))
    return found


def unit(module: str) -> str:
    """The part of the package a module belongs to: lmforge.data.corpus -> data, lmforge.config -> config,
    lmforge itself -> (root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def is_application(module: str) -> bool:
    """Whether a module belongs to the application layer."""
    return unit(module) in APPLICATION


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member (each one an import cycle)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:  # recursive: the graph is a few hundred nodes
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def module_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles between modules."""
    edges: dict[str, set[str]] = {}
    for item in imports:
        edges.setdefault(item.source, set()).add(item.target)
    return strongly_connected(edges)


def package_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles between the package's parts (data, models, config, ...), the root counted as its own part."""
    edges: dict[str, set[str]] = {}
    for item in imports:
        if unit(item.source) != unit(item.target):
            edges.setdefault(unit(item.source), set()).add(unit(item.target))
    return strongly_connected(edges)


def upward_imports(imports: list[Import]) -> list[Import]:
    """Imports of the application (app, api, cli) or of the package root by a library module."""
    return [item for item in imports if not is_application(item.source)
            and (unit(item.target) in FORBIDDEN_FROM_LIBRARY or item.target == "lmforge")]


def lm_parameters() -> list[str]:
    """Library functions with a parameter named `lm` (the LM facade): the library takes a Bundle or its parts."""
    found = []
    for name, path in all_modules().items():
        if is_application(name):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a]
                if "lm" in names:
                    found.append(f"  {name} (line {node.lineno}) {getattr(node, 'name', 'lambda')}")
    return found


def counts() -> dict[str, int]:
    """The numbers the closing note and docs/ARCHITECTURE.md quote."""
    imports = internal_imports()
    library = [item for item in imports if not is_application(item.source)]
    return {"modules": len(all_modules()), "internal imports": len(imports),
            "module cycles (SCCs)": len(module_cycles(imports)),
            "modules in cycles": sum(map(len, module_cycles(imports))),
            "package cycles (SCCs)": len(package_cycles(imports)),
            "parts in the largest package cycle": max(map(len, package_cycles(imports)), default=0),
            "upward imports": len(upward_imports(imports)),
            "function-level imports": sum(item.in_function for item in imports),
            "function-level imports in the library": sum(item.in_function for item in library),
            "library functions taking `lm`": len(lm_parameters())}


def _describe(items: list[Import]) -> str:
    return "\n".join(f"  {item.source} (line {item.line}) imports {item.target}" for item in items)


def test_the_walk_sees_imports_inside_functions():
    imports = internal_imports()
    assert any(item.in_function for item in imports)
    assert any(item.source == "lmforge.cli" for item in imports)
    assert unit("lmforge.data.corpus") == "data" and unit("lmforge") == "(root)"


def test_cycle_finder_finds_a_cycle_and_only_cycles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    cycles = module_cycles(internal_imports())
    assert not cycles, "import cycles between modules (break them by moving the shared part down):\n" + "\n".join(
        "  " + " <-> ".join(cycle) for cycle in cycles)


def test_no_import_cycle_between_packages():
    imports = internal_imports()
    cycles = package_cycles(imports)
    detail = []
    for cycle in cycles:
        members = set(cycle)
        detail += [item for item in imports if unit(item.source) in members and unit(item.target) in members
                   and unit(item.source) != unit(item.target)]
    assert not cycles, ("import cycles between packages: " + "; ".join(" <-> ".join(c) for c in cycles)
                        + "\n" + _describe(detail))


def test_the_library_never_imports_the_application():
    upward = upward_imports(internal_imports())
    assert not upward, ("library modules import the application or the package root (take a Bundle or its parts; "
                        "import lmforge._version for the version):\n" + _describe(upward))


def test_no_library_function_takes_the_lm_facade():
    found = lm_parameters()
    assert not found, ("library functions take the LM facade (`lm`); take a Bundle or its parts (model, tokenizer, "
                       "config, meta) and return what changes:\n" + "\n".join(found))


def private_imports() -> list[str]:
    """`from lmforge.x import _name` between modules: a private name another module relies on should be public."""
    found = []
    for name, path in all_modules().items():
        for node, _ in _walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("lmforge")):
                hidden = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"  {name} (line {node.lineno}) imports {hidden}"] if hidden else []
    return found


def test_no_private_name_is_imported_across_modules():
    found = private_imports()
    assert not found, "private names imported from another module (make them public):\n" + "\n".join(found)


def _fresh_python(code: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                            timeout=120, check=True)
    return result.stdout.strip()


# config.py reads the family registry (models/), whose modules are torch modules: it is not torch-free
@pytest.mark.parametrize("modules", ["lmforge.errors, lmforge._version, lmforge.bundle",
                                     "lmforge.files, lmforge.app.commands"])
def test_leaves_do_not_import_torch(modules):
    heavy = _fresh_python(f"import sys, {modules}; print(sorted(m for m in ('torch', 'numpy', 'lmforge.api') "
                          "if m in sys.modules))")
    assert heavy == "[]", f"importing {modules} pulled in {heavy}"


def test_lmforge_help_does_not_import_torch():
    code = ("import sys, contextlib, io\nfrom lmforge.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    try:\n        main(['--help'])\n    except SystemExit:\n"
            "        pass\nassert 'train' in out.getvalue()\nprint('torch' in sys.modules)")
    assert _fresh_python(code) == "False", "`lmforge --help` imported torch: import it inside the command's run()"


MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 500  # the house rule: no function past ~80 lines, no file past ~500


def oversized(sources: dict[str, str]) -> list[str]:
    """Each function longer than MAX_FUNCTION_LINES (def line to last line, nested ones too) and each module
    longer than MAX_MODULE_LINES in `sources` (name -> text), with its length, longest first."""
    found = []
    for name, text in sources.items():
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append((lines, f"{name}: module of {lines} lines (at most {MAX_MODULE_LINES})"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append((length, f"{name}:{node.lineno} {node.name}: function of {length} lines "
                                          f"(at most {MAX_FUNCTION_LINES})"))
    return [line for _, line in sorted(found, reverse=True)]


def package_sources() -> dict[str, str]:
    return {str(path.relative_to(PACKAGE.parent)): path.read_text(encoding="utf-8")
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_size_check_finds_long_functions_and_long_modules():
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    short, long = f"def short():\n{body}", f"async def long():\n{body}    return 1\n"  # 80 and 81 lines
    assert oversized({"a.py": short}) == []
    assert oversized({"b.py": long}) == ["b.py:1 long: function of 81 lines (at most 80)"]
    padding = "\n" * (MAX_MODULE_LINES + 1 - len(long.splitlines()))
    assert oversized({"c.py": long + padding})[1] == "c.py:1 long: function of 81 lines (at most 80)"
    assert oversized({"c.py": long + padding})[0] == "c.py: module of 501 lines (at most 500)"


def test_no_function_past_80_lines_and_no_module_past_500():
    found = oversized(package_sources())
    assert not found, "split these along their seams:\n" + "\n".join(found)


if __name__ == "__main__":
    for key, value in counts().items():
        print(f"{key}: {value}")
    for line in oversized(package_sources()):
        print(line)
    if "-v" in sys.argv:
        found = internal_imports()
        for cycle in package_cycles(found):
            print("package cycle:", " <-> ".join(cycle))
        for cycle in module_cycles(found):
            print("module cycle:", " <-> ".join(cycle))
        print(_describe(upward_imports(found)))
