"""C-side plugin string processing (reference §1.2, §1.6)."""

from __future__ import annotations

import pytest

from fdsim.plugstring import PluginStringError, is_python_plugin, merge_override, parse_definition


@pytest.mark.parametrize(("cmd", "path", "name", "options"), [
    ("python3:module_path=/p:module_name=m:option=value", "/p", "m", "option=value:"),
    ("python:module_name=m", "", "m", ""),
    # prefix match: 'mod' and the empty key are module_path; 'module_n' is module_name
    ("python3:mod=/a:module_n=b:x=1", "/a", "b", "x=1:"),
    ("python3:=/empty:module_name=m", "/empty", "m", ""),
    ("python3:MODULE_NAME=a\\-b", "", "a-b", ""),  # backslashes removed from module_*
    # an escaped colon does not end a value and the backslash stays for Python
    ("python3:module_name=m:pw=a\\:b:c=d", "", "m", "pw=a\\:b:c=d:"),
    # an item without '=' swallows the next separator
    ("python3:module_name=m:flag:k=v", "", "m", "flag:k=v:"),
    # last one wins within a single string
    ("python3:module_name=a:module_name=b", "", "b", ""),
])
def test_parse(cmd: str, path: str, name: str, options: str) -> None:
    d = parse_definition(cmd)
    assert d is not None
    assert (d.module_path, d.module_name, d.options) == (path, name, options)


def test_errors_and_all() -> None:
    assert parse_definition("*all*") is None
    with pytest.raises(PluginStringError, match="Illegal plugin definition"):
        parse_definition("python3")
    with pytest.raises(PluginStringError, match="Illegal argument novalue without value"):
        parse_definition("python3:module_name=m:novalue")


def test_override_merge_first_wins() -> None:
    merged = merge_override("python3:module_name=new:restore_x=1", "python3:module_name=old:a=b")
    assert merged == "python3:module_name=new:restore_x=1:module_name=old:a=b"
    d = parse_definition(merged, first_wins=True)
    assert d is not None and d.module_name == "new" and d.options == "restore_x=1:a=b:"
    assert merge_override("python3:x=1:", "python3:a=b") == "python3:x=1:a=b"


def test_plugin_names() -> None:
    assert is_python_plugin("python3:a=b") and is_python_plugin("python:a=b")
    assert not is_python_plugin("python3") and not is_python_plugin("bpipe:a=b")
