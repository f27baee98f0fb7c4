"""``docs/configuration.md``, generated from the settings' classes: every setting, where it is set, its default.

Each field's meaning is its ``#:`` comment in ``model.py`` (the convention Sphinx reads).
``python -m proxy.settings.reference > docs/configuration.md`` writes the page; a test keeps
the committed page equal to what this writes, and every field documented.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
from typing import Any

from proxy.settings import model
from proxy.settings.load import ENV_OVERRIDES, ENV_PREFIX
from proxy.settings.model import SECTIONS

_INTRO = """# Configuration

Every setting of the proxy, generated from its settings classes (`proxy/settings/model.py`)
by `python -m proxy.settings.reference`; a test keeps this page true.

Settings come from a TOML file (`--config FILE`, or the `PROXY_CONFIG` environment variable),
then the environment, then the command line (`--workers`), each over the one before. Every
setting has an environment name, `PROXY_<SECTION>__<KEY>` (two underscores between the parts);
a project's override is `PROXY_PROJECTS__<ID>__<KEY>`. A setting ending in `_file` reads its
secret from that file (a mounted secret) instead: set one or the other. All problems are
reported together at start-up (`python -m proxy --check` checks without starting);
`--print-config` shows the settings in effect with every secret redacted. Numbers must be
finite (`inf` and `nan` are refused) and a duration (a TTL, timeout, delay, budget) at most a
year.
"""


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Each field of a dataclass and the ``#:`` comment lines right above it, joined."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    docs: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                comment.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            docs[node.target.id] = " ".join(comment)
    return docs


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def _aliases() -> dict[tuple[str, str], str]:
    return {place: name for name, place in ENV_OVERRIDES.items()}


def _table(section: str, cls: type[Any], env_part: str) -> list[str]:
    docs = field_docs(cls)
    aliases = _aliases()
    rows = ["| Key | Environment | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        env = f"`{ENV_PREFIX}{env_part}__{f.name.upper()}`"
        if (alias := aliases.get((section, f.name))) is not None:
            env += f" (or `{alias}`)"
        meaning = docs.get(f.name, "").replace("|", "\\|")
        rules = [f"**{f.metadata['bound']}**"] if f.metadata.get("bound") else []
        rules += ["**a secret: never shown**"] if f.metadata.get("secret") else []
        rules += ["**shown without its secrets**"] if f.metadata.get("url") else []
        if rules:
            meaning = f"{meaning} ({'; '.join(rules)})" if meaning else "; ".join(rules)
        rows.append(f"| `{f.name}` | {env} | {_default(f)} | {meaning} |")
    return rows


def render() -> str:
    """The whole page."""
    out = [_INTRO]
    for section, cls in SECTIONS.items():
        out += [f"## `[{section}]`", ""]
        if (doc := cls.__doc__) and not doc.startswith(f"{cls.__name__}("):  # not dataclass' own signature
            out += [inspect.cleandoc(doc), ""]
        out += _table(section, cls, section.upper())
        out.append("")
    out += ['## `[projects."<id>"]`', ""]
    out += [inspect.getdoc(model.ProjectOverride) or "", ""]
    out += _table("projects", model.ProjectOverride, "PROJECTS__<ID>")
    out.append("")
    return "\n".join(out)


def undocumented() -> list[str]:
    """Settings with no ``#:`` comment: each must say what it does."""
    classes: list[tuple[str, type[Any]]] = [*SECTIONS.items(), ("projects", model.ProjectOverride)]
    return [f"[{section}] {name}" for section, cls in classes for name, doc in field_docs(cls).items() if not doc]


if __name__ == "__main__":
    sys.stdout.write(render())
