"""The example configuration (packaging/examples, shipped in the packages) and the manual stay valid.

Every ``Plugin =`` line of an example FileSet, and every ``pluginoptions="..."`` of a restore that
the examples or docs/install.md show, goes through what the fd does with it: the python3-fd's own
split (fdsim's rendition of ``parse_plugin_definition``), then the plugin's option parser, which
must accept it whole (restore options together with the FileSet's, as a restore job has them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import pytest

from bareos_hyperv.fd.options import PluginOptions
from fdsim.plugstring import parse_definition

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "packaging" / "examples"
_DIRECTIVE = re.compile(r'^\s*(Plugin|FD\s*Plugin\s*Options)\s*=\s*((?:"(?:[^"\\]|\\.)*"\s*)+)',
                        re.IGNORECASE | re.MULTILINE)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def bareos_strings(text: str) -> Dict[str, List[str]]:
    """``Plugin``/``FD Plugin Options`` values as the Bareos config lexer reads them.

    Adjacent quoted strings are joined, and a backslash inside quotes takes the next character
    literally (``\\\\`` is one backslash).
    """
    found: Dict[str, List[str]] = {}
    for m in _DIRECTIVE.finditer(text):
        key = re.sub(r"\s+", "", m.group(1)).lower()
        value = "".join(re.sub(r"\\(.)", r"\1", part) for part in _QUOTED.findall(m.group(2)))
        found.setdefault(key, []).append(value)
    return found


def _files(kind: str) -> List[Path]:
    return sorted((EXAMPLES / "bareos-dir.d" / kind).glob("*.conf"))


def test_the_examples_are_in_bareos_layout() -> None:
    assert _files("fileset") and _files("job") and _files("jobdefs") and _files("schedule") and _files("client")
    client = (EXAMPLES / "bareos-fd.d" / "client" / "myself.conf").read_text(encoding="utf-8")
    assert 'Plugin Names = "python3"' in client and "Plugin Directory" in client
    cred = (EXAMPLES / "hyperv.cred.example").read_text(encoding="utf-8")
    assert "username =" in cred and "password =" in cred and "0600" in cred


@pytest.mark.parametrize("path", _files("fileset"), ids=lambda p: p.name)
def test_each_fileset_plugin_line_is_accepted(path: Path) -> None:
    plugins = bareos_strings(path.read_text(encoding="utf-8"))["plugin"]
    assert plugins
    for line in plugins:
        defn = parse_definition(line)
        assert defn is not None and defn.plugin_name == "python3"
        assert defn.module_name == "bareos-fd-hyperv"
        assert (REPO / "packaging" / f"{defn.module_name}.py").is_file()
        options = PluginOptions()
        options.add_definition(defn.options)
        options.check()


def _restore_option_strings() -> List[str]:
    texts = [p.read_text(encoding="utf-8") for p in _files("job")]
    texts.append((REPO / "docs" / "install.md").read_text(encoding="utf-8"))
    return [m for text in texts for m in re.findall(r'pluginoptions="([^".][^"]*)"', text)]


def test_documented_restore_plugin_options_are_accepted() -> None:
    found = _restore_option_strings()
    assert len(found) >= 4
    fileset = bareos_strings((EXAMPLES / "bareos-dir.d" / "fileset" / "hyperv-web01.conf").read_text(
        encoding="utf-8"))["plugin"][0]
    for value in found:
        options = PluginOptions()
        override = parse_definition(value)
        assert override is not None and override.plugin_name == "python3", value
        options.add_definition(override.options)
        options.add_definition(parse_definition(fileset).options)  # type: ignore[union-attr]
        options.check()
        options.restore_options("/")


def test_lexer_rendition() -> None:
    text = 'Plugin = "python3"\n   ":a=C\\\\:\\\\x"\n   ":b=1"\nFD Plugin Options = "python3:c=2"\n'
    assert bareos_strings(text) == {"plugin": ["python3:a=C\\:\\x:b=1"], "fdpluginoptions": ["python3:c=2"]}
