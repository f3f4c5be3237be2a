"""The package's shape, read from its source with ``ast`` (every import: top-level and inside functions).

The import graph flows one way (README's data flow)::

    errors, limits -> model -> ingest -> store -> search -> index -> engine (+ modelinfo, visuals, surface)
      -> scale -> jevsearch (the package: jevsearch.open picks Engine or ShardedEngine)
      -> {serve, eval, integrations} -> cli

A module imports its own area and the areas of lower layers only; areas that share a layer do not
import each other (but the engine's helpers and the leaf modules errors/limits, which are one unit each).
No module reaches itself through imports (no circle, lazy imports included). The apps (serve, eval,
integrations) use the engine only through public names: ``jevsearch``, ``jevsearch.errors``,
``jevsearch.limits``, and the ``__all__`` of ``jevsearch.engine`` and ``jevsearch.index``. Modules stay
under ~500 lines and functions under ~80 (argument parsers aside).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jevsearch"

#: (areas, whether they may import each other), lowest layer first. An area is a top-level module or
#: subpackage of jevsearch; "" is the package itself (jevsearch/__init__.py).
LAYERS = [
    ({"errors", "limits"}, True),
    ({"model"}, False),
    ({"ingest"}, False),
    ({"store"}, False),
    ({"search"}, False),
    ({"index"}, False),
    ({"engine", "modelinfo", "visuals", "surface"}, True),
    ({"scale"}, False),
    ({""}, False),
    ({"serve", "eval", "integrations"}, False),
    ({"cli", "__main__"}, True),
]
APPS = {"serve", "eval", "integrations"}
PUBLIC_MODULES = {"jevsearch", "jevsearch.errors", "jevsearch.limits", "jevsearch.engine", "jevsearch.index"}
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 85  # without its docstring
LONG_ON_PURPOSE = {"jevsearch.cli.parser.build_parser"}  # one argparse table: one line per option


def _name(path: pathlib.Path) -> str:
    parts = ["jevsearch", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(area: str) -> int:
    return next(i for i, (areas, _) in enumerate(LAYERS) if area in areas)


def _imports(module: str):
    """(line, imported module, names taken from it or None) of every import in ``module``, wherever it is."""
    is_pkg = MODULES[module].name == "__init__.py"
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                pkg = module.split(".")[: None if is_pkg else -1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (node.lineno, sub, None) if sub in MODULES else (node.lineno, base, alias.name)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value, None


def _edges() -> dict[str, set[str]]:
    return {m: {target for _, target, _ in _imports(m) if target in MODULES and target != m} for m in MODULES}


def _public(module: str) -> set[str]:
    """The names in ``module``'s ``__all__`` (read from its source)."""
    for node in TREES[module].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def test_every_area_has_a_layer():
    assert {_area(m) for m in MODULES} <= set().union(*(areas for areas, _ in LAYERS))


def test_imports_flow_down_the_layers():
    wrong = []
    for module in MODULES:
        area = _area(module)
        for line, target, _ in _imports(module):
            if not target.startswith("jevsearch") or target not in MODULES:
                continue
            other = _area(target)
            if other == area:
                continue
            mine, theirs = _layer(area), _layer(other)
            if theirs > mine or (theirs == mine and not LAYERS[mine][1]):
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_no_import_circles():
    """Tarjan's strongly connected components over modules: each must be one module."""
    edges, index, low, stack, on, circles = _edges(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_scale_never_touches_the_store():
    """Shards are whole indexes: scale/ reaches them through the Engine, never their LMDB files."""
    wrong = [f"{m}:{line} imports {t}" for m in MODULES if _area(m) == "scale" for line, t, _ in _imports(m)
             if _area(t) == "store" and t.startswith("jevsearch.")]
    assert not wrong, wrong


def test_the_apps_use_only_public_names():
    wrong = []
    for module in MODULES:
        if _area(module) not in APPS:
            continue
        for line, target, name in _imports(module):
            if not target.startswith("jevsearch") or _area(target) == _area(module):
                continue
            if target not in PUBLIC_MODULES:
                wrong.append(f"{module}:{line} imports {target}")
            elif name is not None and target in ("jevsearch.engine", "jevsearch.index") and name not in _public(target):
                wrong.append(f"{module}:{line} takes {name} from {target} (not in its __all__)")
            elif name is not None and target == "jevsearch" and name not in _public(target):
                wrong.append(f"{module}:{line} takes {name} from jevsearch (not in its __all__)")
    assert not wrong, "the apps reach past the public surface:\n" + "\n".join(wrong)


def test_modules_and_functions_stay_small():
    big = [f"{m}: {len(p.read_text(encoding='utf-8').splitlines())} lines" for m, p in MODULES.items()
           if len(p.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES]
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines -= first.end_lineno - first.lineno + 1
            if lines > MAX_FUNCTION_LINES and f"{module}.{node.name}" not in LONG_ON_PURPOSE:
                big.append(f"{module}.{node.name} (line {node.lineno}): {lines} lines")
    assert not big, "split these:\n" + "\n".join(big)


@pytest.mark.parametrize("source, rule", [
    ("from jevsearch.serve.state import AppState\n", "imports against the data flow"),
    ("def f():\n    from jevsearch.cli import main\n", "imports against the data flow"),
])
def test_the_rules_catch_a_violation(monkeypatch, source, rule):
    """A lazy upward import planted in store/ is caught (the checks above are not vacuous)."""
    planted = "jevsearch.store._planted"
    monkeypatch.setitem(MODULES, planted, PACKAGE / "store" / "_planted.py")
    monkeypatch.setitem(TREES, planted, ast.parse(source))
    with pytest.raises(AssertionError, match=rule):
        test_imports_flow_down_the_layers()


def test_the_rules_catch_a_circle_and_a_private_name(monkeypatch):
    planted = "jevsearch.serve._planted"
    monkeypatch.setitem(MODULES, planted, PACKAGE / "serve" / "_planted.py")
    monkeypatch.setitem(TREES, planted, ast.parse("from jevsearch.visuals import open_source\n"
                                                  "from jevsearch.engine import _now\n"))
    with pytest.raises(AssertionError, match=r"imports jevsearch.visuals[\s\S]*takes _now from jevsearch.engine"):
        test_the_apps_use_only_public_names()
    monkeypatch.setitem(TREES, "jevsearch.errors", ast.parse("import jevsearch.limits\n"))
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circles()
