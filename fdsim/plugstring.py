"""The fd's C-side handling of plugin strings (reference §1.1, §1.2, §1.6).

``parse_plugin_definition`` in ``python-fd.cc`` strips ``module_path``/``module_name`` (matched
case-insensitively as *prefixes* of the given key), keeps every other ``key=value`` item in
order with its backslashes and ends the string Python receives with a ``:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

PYTHON_PLUGIN_NAMES = ("python3", "python")
ALL_PLUGINS = "*all*"


class PluginStringError(ValueError):
    """A plugin string the fd refuses; the message is the fd's job message text."""


@dataclass(frozen=True)
class PluginDefinition:
    """Result of the C-side parse."""

    plugin_name: str
    module_path: str
    module_name: str
    options: str  # what Python receives: "k=v:k2=v2:" (empty when there is no other item)


def plugin_name(cmd: str) -> str:
    """Text before the first ``:`` (the whole string if there is none)."""
    return cmd.split(":", 1)[0]


def is_python_plugin(cmd: str) -> bool:
    """Whether the fd routes ``cmd`` to python3-fd (``python3:`` or ``python:``)."""
    return plugin_name(cmd) in PYTHON_PLUGIN_NAMES and ":" in cmd


def _split_items(rest: str) -> List[Tuple[str, str]]:
    items: List[Tuple[str, str]] = []
    while rest:
        eq = rest.find("=")  # strchr over the whole remainder: "flag:k=v" -> key "flag:k"
        if eq < 0:
            raise PluginStringError(f"python3-fd: Illegal argument {rest} without value")
        key, tail = rest[:eq], rest[eq + 1:]
        start = 0
        while True:
            colon = tail.find(":", start)
            if colon < 0:
                items.append((key, tail))
                rest = ""
                break
            if colon > 0 and tail[colon - 1] == "\\":
                start = colon + 1
                continue
            items.append((key, tail[:colon]))
            rest = tail[colon + 1:]
            break
    return items


def _is_prefix_of(key: str, name: str) -> bool:
    return name.lower().startswith(key.lower()) and len(key) <= len(name)


def parse_definition(cmd: str, first_wins: bool = False) -> PluginDefinition | None:
    """Parse like ``python-fd.cc`` ``parse_plugin_definition``; None for ``*all*``.

    ``first_wins`` is the restore case where a ``pluginoptions`` override was stored first:
    then the first non-empty ``module_path``/``module_name`` wins instead of the last.
    """
    if cmd == ALL_PLUGINS:
        return None
    if ":" not in cmd:
        raise PluginStringError(f"python3-fd: Illegal plugin definition {cmd}")
    name, rest = cmd.split(":", 1)
    module_path = ""
    module_name = ""
    others: List[str] = []
    for key, raw in _split_items(rest):
        if _is_prefix_of(key, "module_path"):
            if not (first_wins and module_path):
                module_path = raw.replace("\\", "")
        elif _is_prefix_of(key, "module_name"):
            if not (first_wins and module_name):
                module_name = raw.replace("\\", "")
        else:
            others.append(f"{key}={raw}")
    options = ":".join(others) + ":" if others else ""
    return PluginDefinition(name, module_path, module_name, options)


def merge_override(override: str, backup_cmd: str) -> str:
    """``<override>`` + backup-time string from its first ``:`` (no doubled ``:``)."""
    colon = backup_cmd.find(":")
    tail = backup_cmd[colon:] if colon >= 0 else ""
    if override.endswith(":") and tail.startswith(":"):
        tail = tail[1:]
    return override + tail
