"""The package's shape: no import circles, small modules, no study code."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_free  # reads source files only

PACKAGE = Path(__file__).resolve().parents[1] / "keras_gradmix"


def modules() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path, known) -> set:
    """Package modules ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in known}
    return found


def test_no_module_is_in_an_import_circle():
    known = modules()
    # A package's __init__ importing its own submodules is not a circle.
    graph = {m: {t for t in imports(p, known) if t != m and not t.startswith(m + ".")}
             for m, p in known.items()}

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert circles == []


def test_modules_stay_small_and_study_code_stays_out():
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    assert not (PACKAGE / "experiments.py").exists()


def test_the_attribution_is_below_the_training_wrapper():
    """attribution_maps, faithfulness and the attributor do not reach the
    wrapper through their imports (``from keras_gradmix import masks`` counts
    as importing ``masks``: the package's ``__init__`` runs first anyway)."""
    known = modules()
    graph = {m: {t for t in imports(p, known) if t not in (m, "keras_gradmix")} for m, p in known.items()}

    def reached(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    for module in ("keras_gradmix.attributor", "keras_gradmix.explain", "keras_gradmix.faithfulness"):
        assert "keras_gradmix.model" not in reached(module), module
