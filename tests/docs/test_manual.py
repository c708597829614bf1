"""The manual (docs/manual): it builds with Sphinx without a warning, its generated chapters are up to
date, every error message the product raises is in the troubleshooting chapter, and every plugin
option is in the options chapter with its default."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import List

import pytest

from bareos_hyperv.fd.options import OPTIONS, PluginOptions
from fdsim.plugstring import parse_definition

ROOT = Path(__file__).resolve().parents[2]
MANUAL = ROOT / "docs" / "manual"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manual_generate", MANUAL / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _code_blocks(rst: str) -> List[str]:
    """The bodies of the ``.. code-block::`` directives of a chapter, each normalised."""
    blocks: List[str] = []
    lines = rst.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith(".. code-block::"):
            i += 1
            body: List[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i].strip())
                i += 1
            blocks.append(_doc_form(" ".join(body)))
        else:
            i += 1
    return blocks


def _doc_form(text: str) -> str:
    """A message as the manual shows it, in the extraction's form: ``<host>``-style placeholders and
    ``{...}`` are both the wildcard ``{...}``; whitespace is one space."""
    return gen.normalise(re.sub(r"<[a-z][a-z0-9 _-]*>", gen.PLACEHOLDER, text))


def test_extraction_finds_the_product_messages() -> None:
    msgs, classes = gen.messages()
    assert {"ConfigurationError", "WsmanError", "HyperVError", "StorageError", "ManifestError", "PlanError",
            "ProtocolError", "JobFailedError", "DeltaFormatError", "VhdChainError"} <= set(classes)
    assert "ValueError" not in classes
    assert len(msgs) > 150, len(msgs)
    # f-strings become templates with {...}; literal text is kept as written.
    assert "option {...}={...} is not a yes/no value" in msgs
    assert msgs["option {...}={...} is not a yes/no value"].what_to_do == ["write {...}=yes or {...}=no"]
    assert "agent_python {...} does not exist or is not executable" in msgs
    # a message passed as a local variable is followed to its assignment
    assert "{...} on {...} failed: {...}" in msgs
    # an error class whose constructor builds the message (keyword-only arguments)
    assert "{...}.{...} on {...} failed with return value {...}" in msgs
    # VhdError(name, message): the message is the second argument; the class's default_what_to_do is the hint
    chain = msgs["differencing chain is deeper than {...} disks"]
    assert chain.classes == {"VhdChainError"} and any("Get-VHD" in h for h in chain.what_to_do)
    # every layer the brief names has messages
    modules = {m for msg in msgs.values() for m in msg.modules}
    for part in ("fd", "restore", "backup", "hyperv", "agent", "storage", "wsman", "manifest"):
        assert any(m.startswith(f"bareos_hyperv/{part}/") for m in modules), part


def test_normalisation() -> None:
    assert gen.normalise("a {...}{...}  b\n c {...} {...}") == "a {...} b c {...}"
    assert _doc_form("cannot reach <host> on {...}") == "cannot reach {...} on {...}"
    assert not gen.readable("{...}: {...}")
    assert gen.readable("{...} has no disk")


def test_every_error_message_is_in_the_troubleshooting_chapter() -> None:
    chapter = (MANUAL / "troubleshooting.rst").read_text(encoding="utf-8")
    blocks = _code_blocks(chapter)
    text = "\n".join(blocks)
    msgs, _ = gen.messages()
    missing = [t for t in msgs if _doc_form(t) not in text]
    assert not missing, f"{len(missing)} message(s) not in docs/manual/troubleshooting.rst " \
                        f"(run python docs/manual/generate.py): {missing[:5]}"


def test_generated_chapters_are_up_to_date() -> None:
    for name, make in gen.GENERATED.items():
        assert (MANUAL / name).read_text(encoding="utf-8") == make(), \
            f"docs/manual/{name} is out of date: run python docs/manual/generate.py"


def test_every_option_is_in_the_options_chapter_with_its_default() -> None:
    chapter = (MANUAL / "options.rst").read_text(encoding="utf-8")
    rows = chapter.split("   * - ")
    for key, spec in OPTIONS.items():
        row = next((r for r in rows if r.startswith(f"``{key}``\n")), None)
        assert row is not None, f"option {key} is not in docs/manual/options.rst"
        cells = [c.strip() for c in row.split("\n     - ")]
        assert cells[1] == spec.kind.__name__, key
        assert cells[2] == f"``{gen.default_text(spec)}``", key
        assert f"``{key}=" in cells[4], key  # an example
        assert "Level: " in cells[4], key
    if OPTIONS["timeout"].default is not None:
        assert "``1800``" in next(r for r in rows if r.startswith("``timeout``"))


def test_restore_plugin_options_in_the_manual_are_accepted() -> None:
    """Every ``pluginoptions="..."`` the manual shows, as bconsole delivers it (a backslash takes the
    next character literally), is accepted by the plugin's option parser with a FileSet's options."""
    found = [re.sub(r"\\(.)", r"\1", m) for page in MANUAL.glob("*.rst")
             for m in re.findall(r'pluginoptions="([^".][^"]*)"', page.read_text(encoding="utf-8"))]
    assert len(found) >= 7, found
    fileset = parse_definition("python3:module_name=bareos-fd-hyperv:host=hv-cluster01:vm=web01")
    assert fileset is not None
    for value in found:
        override = parse_definition(value)
        assert override is not None and override.plugin_name == "python3", value
        options = PluginOptions()
        options.add_definition(override.options)
        options.add_definition(fileset.options)
        options.check()
        options.restore_options("/")


def test_manual_builds_without_warnings(tmp_path: Path) -> None:
    if importlib.util.find_spec("sphinx") is None:
        pytest.fail("sphinx is not installed: it is in the [test] extras (pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(MANUAL), str(tmp_path / "html")],
        check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "installation", "hyperv-hosts", "options", "backup", "restore", "manifest",
                 "delta-format", "troubleshooting", "limitations", "throughput"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


def test_readme_links_the_manual() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/manual/index.rst" in readme and "make manual" in readme
    assert re.search(r"^manual:", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
