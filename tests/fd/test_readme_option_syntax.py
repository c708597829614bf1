r"""Every plugin string the README shows, read the way Bareos reads it, is accepted by the plugin.

The text comes from README.md itself: each ``Plugin = "..."`` of a FileSet block goes through the
director's configuration lexer (fdsim.dirconf, lib/lex.cc), each bconsole ``pluginoptions=`` through
the director's argument splitter (lib/scan.cc), then through the fd's C-side parse (fdsim.plugstring,
python-fd.cc) and finally the plugin's own option parser.  The "Writing option values" table is
checked both ways: its "write" spellings arrive intact, its "not" spellings (written with the old
``\:`` advice) are refused, by the fd or by the plugin, with the spelling to use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from bareos_hyperv.fd.options import PluginOptions
from bareos_hyperv.model.options import HostEndpoint
from fdsim.dirconf import bconsole_pluginoptions, fileset_plugin_strings
from fdsim.plugstring import PluginStringError, is_python_plugin, merge_override, parse_definition

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks() -> List[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _fileset_strings() -> List[str]:
    return [s for block in _blocks() if re.search(r"^\s*(FileSet|Plugin)\b", block, re.M | re.I)
            for s in fileset_plugin_strings(block)]


def _bconsole_commands() -> List[str]:
    out = []
    for block in _blocks():
        # A prompt line '* ...'; a line ending in ' \' is printed wrapped and continues the command.
        for cmd in re.findall(r"^\* (.*?)(?<!\\)$", block.replace(" \\\n", " "), flags=re.M):
            if "pluginoptions=" in cmd:
                out.append(cmd)
    return out


def _options(*definitions: str) -> PluginOptions:
    opts = PluginOptions()
    for definition in definitions:
        assert opts.collect_definition(definition) == []
    assert opts.problems == [], [str(p) for p in opts.problems]
    return opts


def test_the_readme_has_the_examples_this_test_reads() -> None:
    assert len(_fileset_strings()) >= 2
    assert len(_bconsole_commands()) >= 2


@pytest.mark.parametrize("plugin", _fileset_strings())
def test_every_fileset_plugin_string_reaches_the_plugin_intact(plugin: str) -> None:
    assert is_python_plugin(plugin)
    definition = parse_definition(plugin)  # the fd's C side: raises on a cut value at the end
    assert definition is not None and definition.module_name == "bareos-fd-hyperv"
    opts = _options(definition.options)
    opts.check()


def test_the_cluster_example_means_what_it_says() -> None:
    (plugin,) = [p for p in _fileset_strings() if "host_map" in p]
    definition = parse_definition(plugin)
    assert definition is not None
    sent = _options(definition.options).job_options()  # what the agent receives, typed
    assert sent.connection.host_map == (HostEndpoint("HV01", "10.0.0.5", 5985), HostEndpoint("HV02", "10.0.0.6", 5985))
    assert sent.connection.smb_host_map == (HostEndpoint("HV01", "10.0.0.5", 445),
                                            HostEndpoint("HV02", "10.0.0.6", 445))
    assert sent.backup is not None and sent.backup.staging_path == "C:\\ClusterStorage\\Volume1\\bareos-staging"
    assert sent.backup.vms == ("web01", "db01") and sent.credentials_file == "/etc/bareos/hyperv.cred"


@pytest.mark.parametrize("command", _bconsole_commands())
def test_every_bconsole_restore_reaches_the_plugin_intact(command: str) -> None:
    override = bconsole_pluginoptions(command)
    assert is_python_plugin(override)
    backup_time = _fileset_strings()[0]
    # python-fd.cc: the restore's pluginoptions go in front of the backup-time string (reference §1.6)
    definition = parse_definition(merge_override(override, backup_time), first_wins=True)
    assert definition is not None and definition.module_name == "bareos-fd-hyperv"
    restore = _options(definition.options).restore_options("/")
    if "restore_storage" in override:
        assert restore.storage == "C:\\ClusterStorage\\Volume2"
        assert [(m.source, m.folder) for m in restore.disk_map] == [
            ("web01-data.vhdx", "C:\\ClusterStorage\\Volume3\\web01")]


def _table() -> List[Tuple[str, str, str]]:
    rows = re.findall(r"^\| (.+?) \| `([^`]+)`[^|]*\| `([^`]+)` \|$", _section("Writing option values"), re.M)
    assert len(rows) == 4
    return rows


def _option_of(description: str) -> str:
    named = re.findall(r"`([a-z_]+)`", description)
    return named[0] if named else "restore_storage"  # "a UNC path": any path option


CANONICAL: Dict[str, str] = {
    "host_map": "HV01=10.0.0.5:5985",
    "staging_path": "C:\\ClusterStorage\\Volume1",
    "restore_storage": "\\\\fileserver\\vms",
    "share_map": "HV01:D:\\VMs=\\\\hv01\\vms",
}


def _fileset(option: str, written: str, last: bool) -> str:
    """A FileSet line with ``option=written`` as an administrator types it into bareos-dir.conf."""
    tail = "" if last else ":timeout=600"
    return (f'FileSet {{ Name = "x"\n  Include {{ Plugin = "python3:module_name=bareos-fd-hyperv:host=hv01:vm=web01'
            f':{option}={written}{tail}" }} }}')


@pytest.mark.parametrize(("description", "write", "wrong"), _table())
def test_the_table_spellings(description: str, write: str, wrong: str) -> None:
    option = _option_of(description)
    for last in (False, True):
        (plugin,) = fileset_plugin_strings(_fileset(option, write, last))
        definition = parse_definition(plugin)
        assert definition is not None
        assert _options(definition.options).get(option) == CANONICAL[option]

    # The old advice: a ':' escaped as '\:', backslashes as they are.  The director drops them.
    old = wrong.replace(":", "\\:")
    (plugin,) = fileset_plugin_strings(_fileset(option, old, last=False))
    definition = parse_definition(plugin)
    assert definition is not None
    opts = PluginOptions()
    opts.collect_definition(definition.options)
    assert opts.problems, f"{option}={old} in bareos-dir.conf was accepted as {definition.options}"
    (plugin,) = fileset_plugin_strings(_fileset(option, old, last=True))
    try:
        definition = parse_definition(plugin)
    except PluginStringError as exc:
        assert "without value" in str(exc)  # the fd's own refusal (python-fd.cc)
    else:
        assert definition is not None
        opts = PluginOptions()
        opts.collect_definition(definition.options)
        assert opts.problems


def test_the_documented_refusal_message_is_what_the_plugin_says() -> None:
    section = _section("Writing option values")
    (said,) = re.findall(r"e\.g\. `(write host_map=[^`]+)`", section)
    (plugin,) = [p for p in _fileset_strings() if "host_map" in p]
    # What the director delivers when the host_map was written with the old '\:' advice.
    mangled = plugin.replace("#", ":")
    definition = parse_definition(mangled)
    assert definition is not None
    opts = PluginOptions()
    opts.collect_definition(definition.options)
    assert any(said in str(p) for p in opts.problems), [str(p) for p in opts.problems]


def test_the_double_backslash_spelling_still_works() -> None:
    section = _section("Writing option values")
    assert "`HV01=10.0.0.5\\\\:5985`" in section
    (plugin,) = fileset_plugin_strings(_fileset("host_map", "HV01=10.0.0.5\\\\:5985", last=True))
    definition = parse_definition(plugin)
    assert definition is not None
    assert _options(definition.options).job_options().connection.host_map == (HostEndpoint("HV01", "10.0.0.5", 5985),)
    (plugin,) = fileset_plugin_strings(_fileset("restore_disk_map", "SCSI 0\\\\:1=C$/VMs", last=True))
    definition = parse_definition(plugin)
    assert definition is not None
    assert _options(definition.options).get("restore_disk_map") == "SCSI 0:1=C:\\VMs"
