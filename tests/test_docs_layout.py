"""Docs that cannot drift: every ``proxy/...`` path the docs and docstrings name exists, and every module of
``proxy/`` stands in ``docs/architecture.md``'s layout, under its own package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / "proxy"
#: ``proxy/web/app.py``, ``proxy/pipeline/`` and the like, as prose names them
_PATH = re.compile(r"(?<![\w/.-])proxy/(?:[a-z_]+/)*(?:[a-z_]+\.py|[a-z_]+/)")
#: ``proxy.pipeline.delivery.relay`` and the like, as docstrings name them
_DOTTED = re.compile(r"``(proxy(?:\.[a-z_]+)+)")
#: dotted names that are not modules: the access log's logger
NOT_MODULES = frozenset({"proxy.access"})


def _texts() -> dict[str, str]:
    """Every doc and every module's docstrings, by where they are."""
    found = {
        str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    }
    for module in sorted(PROXY.rglob("*.py")):
        tree = ast.parse(module.read_text())
        strings = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        found[str(module.relative_to(ROOT))] = "\n".join(strings)
    return found


def _tests() -> dict[str, str]:
    """The tests' text, whole (they name the modules they test by path)."""
    return {str(test.relative_to(ROOT)): test.read_text() for test in sorted((ROOT / "tests").rglob("*.py"))}


def test_every_proxy_path_the_docs_and_docstrings_name_exists():
    missing = []
    for where, text in {**_texts(), **_tests()}.items():
        for path in _PATH.findall(text):
            if not (ROOT / path).exists():
                missing.append(f"{where}: {path}")
    for where, text in _texts().items():
        for dotted in set(_DOTTED.findall(text)) - NOT_MODULES:
            parts = dotted.split(".")
            # the longest prefix that is a module or package; what follows must be a name defined there
            for cut in range(len(parts), 0, -1):
                base = ROOT.joinpath(*parts[:cut])
                if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
                    break
            else:
                missing.append(f"{where}: {dotted}")
                continue
            rest = parts[cut:]
            if rest:
                source = (
                    base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
                ).read_text()
                if not re.search(rf"\b(?:def|class|async def)\s+{rest[0]}\b|^{rest[0]}\b\s*[:=]", source, re.M):
                    missing.append(f"{where}: {dotted}")
    assert not missing, missing


def _layout() -> dict[str, set[str]]:
    """The architecture page's layout: each package's named modules (the base modules under ``""``)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    named: dict[str, set[str]] = {}
    current = ""
    for line in block.splitlines():
        if match := re.match(r"  ([a-z_]+)/\s", line):
            current = match.group(1)
        elif re.match(r"  [a-z_]+\.py", line) or line.startswith("  __main__"):
            current = ""
        elif not line.startswith("    "):
            continue
        named.setdefault(current, set()).update(re.findall(r"\b([a-z_]+\.py)\b", line))
    return named


def test_every_module_stands_in_the_architecture_layout():
    named = _layout()
    missing = []
    for module in sorted(PROXY.rglob("*.py")):
        if module.name == "__init__.py":
            continue
        package = "" if module.parent == PROXY else module.parent.name
        if module.name not in named.get(package, set()) and not (package == "" and module.name == "__main__.py"):
            missing.append(str(module.relative_to(ROOT)))
    assert not missing, f"not in docs/architecture.md's layout: {missing}"


def test_a_test_module_imports_no_other_test_module():
    """What tests share lives in ``tests/support/`` (or ``tests/fakes/``, the conftest files): a helper taken from
    another test module ties the two together, and runs that module's import-time code in each."""
    importing = re.compile(r"^\s*(?:from|import) tests\.(?:[a-z_]+\.)*test_[a-z_0-9]+", re.M)
    reaching = {name: found.group(0).strip() for name, text in _tests().items() if (found := importing.search(text))}
    assert reaching == {}
