"""Architecture rules that hold for every library module (dulwich's test_source.py, httpx's __all__)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    p for pkg in ("chunkstore", "index") for p in (ROOT / pkg).rglob("*.py") if p.is_file()
)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_has_docstring_and_sorted_all(path: Path) -> None:
    tree = _tree(path)
    assert ast.get_docstring(tree), f"{path} has no module docstring"
    exported = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in _targets(node))
    ]
    assert exported, f"{path} does not declare __all__"
    names = ast.literal_eval(exported[0]) if exported[0] is not None else []
    assert list(names) == sorted(names, key=_isort_key), f"{path}: __all__ is not sorted"


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 enforces: CONSTANTS, then CamelCase classes, then the rest.
    if name.isupper() or (name.upper() == name and "_" in name):
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_future_annotations(path: Path) -> None:
    tree = _tree(path)
    futures = [
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "__future__"
        for alias in node.names
    ]
    assert "annotations" in futures, f"{path} lacks 'from __future__ import annotations'"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_print_and_environment_only_in_cli(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print", f"{rel}:{node.lineno} calls print()"
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            assert rel.startswith("chunkstore/cli/"), f"{rel}:{node.lineno} reads the environment"


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_media_types_are_spelled_only_in_mediatypes(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    if rel == "chunkstore/registry/mediatypes.py":
        return
    tree = _tree(path)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and node.value.startswith(("application/vnd.oci.", "application/vnd.docker."))
        ):
            raise AssertionError(
                f"{rel}:{node.lineno} spells the media type {node.value!r}; "
                "import it from chunkstore.registry.mediatypes"
            )


#: A library module longer than this does more than one job: split it by role.
MAX_MODULE_LINES = 600


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_library_module_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines (limit {MAX_MODULE_LINES})"
