"""Structural rules of the package, read from the source (no imports of the package itself):
no import cycles, no oversized files without a stated reason, the training core knows nothing
of the toy world."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stream_r1_fast"
MAX_LINES = 400
# A file may be longer when it says why, in a comment or docstring near its top.
REASON = "Why this file is long:"
SOURCE_SUFFIXES = (".py", ".h", ".cuh", ".cu", ".cpp")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its body (lazy imports inside
    functions count: they close a cycle as surely as top-level ones, only later)."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = resolve(name)
            if target and target != module:
                found.add(target)
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    known = _modules()
    edges = {m: _imported(m, p, known) & set(known) for m, p in known.items()}
    assert _cycles(edges) == []


def _source_files():
    for folder in (PACKAGE, ROOT / "csrc"):
        for path in sorted(folder.rglob("*")):
            if path.suffix in SOURCE_SUFFIXES and path.is_file():
                yield path


def test_no_source_file_is_long_without_a_stated_reason():
    long = []
    for path in _source_files():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(REASON in line for line in lines[:40]):
            long.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert long == [], f"over {MAX_LINES} lines with no '{REASON}' in the first 40 lines"


def test_the_training_core_never_names_the_toy_world():
    hits = []
    for path in sorted((PACKAGE / "training").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\btoy", line, re.IGNORECASE):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []


@pytest.mark.parametrize("folder", ["training", "inference", "cache", "models", "ops", "rewards"])
def test_core_packages_do_not_import_the_toy_world(folder):
    known = _modules()
    offenders = []
    for module, path in known.items():
        if module.startswith(f"stream_r1_fast.{folder}"):
            toy = sorted(m for m in _imported(module, path, known) if m.startswith("stream_r1_fast.toy"))
            if toy:
                offenders.append(f"{module} -> {', '.join(toy)}")
    assert offenders == []
