"""The shape of the code: rooms, their allowed imports, no cycles, SQL only in common/store."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("web", "dispatcher", "reporter", "bouncer", "cli")
PACKAGES = (*PROGRAMS, "common")
BLUEPRINTS = (
    "web.service",
    "web.messages",
    "web.commands",
    "web.accounts",
    "web.suppressions",
    "web.tenants",
    "web.ui",
)
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)"
    r"|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE)\b"
)  # our SQL is upper case; prose ("select the rows from") is not


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every product module by dotted name."""
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Our modules this file imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


GRAPH = {name: imports_of(path, set(modules())) for name, path in modules().items()}


def test_no_import_cycle():
    """Depth-first search over the import graph: a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if target == name or target.startswith(name + "."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("program", PROGRAMS)
def test_no_program_imports_another(program):
    for name, targets in GRAPH.items():
        if name.split(".")[0] == program:
            others = {t for t in targets if t.split(".")[0] in set(PROGRAMS) - {program}}
            assert not others, f"{name} imports {others}"


def test_common_imports_no_program():
    for name, targets in GRAPH.items():
        if name.startswith("common"):
            assert not {t for t in targets if t.split(".")[0] in PROGRAMS}, name


def test_blueprints_import_neither_the_app_nor_each_other():
    for blueprint in BLUEPRINTS:
        forbidden = {"web.app", *(set(BLUEPRINTS) - {blueprint})}
        assert not GRAPH[blueprint] & forbidden, blueprint


def test_sql_lives_only_in_common_store():
    offenders = [
        name
        for name, path in modules().items()
        if not name.startswith("common.store") and SQL.search(path.read_text())
    ]
    assert offenders == []


def test_the_sql_check_recognises_sql():
    assert SQL.search('conn.execute("SELECT id FROM messages")')
    assert SQL.search("UPDATE messages SET x = 1")
    assert not SQL.search("select the messages from the queue")
