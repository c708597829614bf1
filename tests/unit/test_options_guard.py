"""Options are parsed and typed once, by the fd: the agent side only reads typed values.

Checked on the source (AST) of the agent, the backup and the restore: no ``.get("...")`` or
``["..."]`` with a string key on anything that looks like an options mapping, and no such lookup of
a compound plugin option name (``host_map``, ``exclude_vm``, ...) on any mapping; and on the wire,
``StartJob.options`` and everything in it is a typed dataclass (no ``Dict[str, str]`` the agent
would parse again with its own defaults).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterator, List, Set

import pytest

from bareos_hyperv.fd.options import OPTIONS
from bareos_hyperv.model.options import JobOptions
from bareos_hyperv.model.restore import RestoreOptions
from bareos_hyperv.protocol.messages import StartJob

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "backup", "restore")


def _string_key(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def option_string_lookups(tree: ast.AST, source: str) -> List[str]:
    """``x.get("key")`` / ``x["key"]`` where ``x`` looks like options or ``key`` names a plugin option."""
    found: List[str] = []
    for node in ast.walk(tree):
        receiver: ast.AST | None = None
        key: str | None = None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args):
            receiver, key = node.func.value, _string_key(node.args[0])
        elif isinstance(node, ast.Subscript):
            receiver, key = node.value, _string_key(node.slice)
        if receiver is None or key is None:
            continue
        text = ast.get_source_segment(source, receiver) or ""
        # Short names (vm, host, data) are also keys of documents the agent reads; compound ones are options.
        if "opt" in text.lower() or (key in OPTIONS and "_" in key):
            found.append(f"{getattr(node, 'lineno', 0)}: {ast.get_source_segment(source, node)}")
    return found


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / "bareos_hyperv" / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_option_strings_are_parsed_on_the_agent_side(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert option_string_lookups(ast.parse(source), source) == []


def test_the_guard_finds_what_it_forbids() -> None:
    source = ('a = opts.get("timeout", "1800")\nb = self._options["smb_mover"]\nc = ctx.options.get("x")\n'
              'd = record.get("host_map")\ne = facts.get("name")\nf = options.timeout\ng = doc["vm"]\n')
    found = option_string_lookups(ast.parse(source), source)
    assert [line.split(":")[0] for line in found] == ["1", "2", "3", "4"]


def _field_types(cls: Any, seen: Set[Any]) -> Iterator[Any]:
    """Every field type of a dataclass, recursively (through Optional, List, Tuple and nested dataclasses)."""
    if cls in seen:
        return
    seen.add(cls)
    for hint in typing.get_type_hints(cls).values():
        stack = [hint]
        while stack:
            tp = stack.pop()
            yield tp
            stack.extend(a for a in getattr(tp, "__args__", ()) if a is not Ellipsis)
            if dataclasses.is_dataclass(tp):
                yield from _field_types(tp, seen)


@pytest.mark.parametrize("cls", [JobOptions, RestoreOptions])
def test_options_cross_the_socket_typed(cls: Any) -> None:
    hints = typing.get_type_hints(StartJob)
    assert hints["options"] is JobOptions
    assert RestoreOptions in hints["restore"].__args__
    untyped = [tp for tp in _field_types(cls, set()) if getattr(tp, "__origin__", None) in (dict, typing.Mapping)]
    assert untyped == [], f"{cls.__name__} carries a mapping the agent would have to interpret: {untyped}"
