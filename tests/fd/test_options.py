"""Plugin options: declared types, first value wins, every problem named with what to write."""

from __future__ import annotations

import pytest

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.fd.options import OPTIONS, PluginOptions, split_definition
from bareos_hyperv.protocol.messages import MissingSwitch, RestoreTarget


def test_split_follows_the_bareos_base_class() -> None:
    items, warnings = split_definition(r"a=1: b = two :c=x\:y\:z:empty=::=v:")
    assert items == [("a", "1"), ("b", "two"), ("c", "x:y:z")]
    assert warnings == ["ignoring option 'empty' with no value"]


def test_first_value_wins_across_definitions() -> None:
    opts = PluginOptions()
    opts.add_definition("source=files:paths=/restore-override:")
    opts.add_definition("source=smb:paths=/backup-time:agent_timeout=9:")
    assert opts.source == "files"
    assert opts.get_str("paths") == "/restore-override"
    assert opts.get_int("agent_timeout") == 9


def test_unknown_option_is_named() -> None:
    opts = PluginOptions()
    with pytest.raises(ConfigurationError) as info:
        opts.add_definition("source=files:pathz=/x:")
    assert "unknown option 'pathz'" in str(info.value)
    assert "paths" in (info.value.what_to_do or "")


@pytest.mark.parametrize("word,value", [("yes", True), ("On", True), ("TRUE", True), ("1", True),
                                        ("no", False), ("off", False), ("false", False), ("0", False)])
def test_booleans(word: str, value: bool) -> None:
    opts = PluginOptions()
    opts.add("smb_encrypt", word)
    assert opts.get_bool("smb_encrypt") is value


@pytest.mark.parametrize(
    ("key", "raw", "fragment"),
    [("smb_encrypt", "maybe", "smb_encrypt=maybe is not a yes/no value"),
     ("agent_timeout", "10s", "agent_timeout=10s is not a whole number"),
     ("smb_port", "0x1bd", "smb_port=0x1bd is not a whole number"),
     ("source", "tape", "source=tape is not one of hyperv, files, smb")],
)
def test_bad_values_name_option_and_value(key: str, raw: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PluginOptions().add(key, raw)
    assert fragment in str(info.value)


def test_all_missing_mandatory_options_are_reported_together() -> None:
    opts = PluginOptions()
    opts.add_definition("source=smb:smb_share=C$:")
    with pytest.raises(ConfigurationError) as info:
        opts.check()
    text = str(info.value)
    assert "mandatory options smb_server, smb_paths not set" in text
    assert "paths" not in text.replace("smb_paths", "")  # only the smb source's options


def test_hyperv_is_the_default_source_and_needs_host_and_vm() -> None:
    opts = PluginOptions()
    assert opts.source == "hyperv"
    assert set(opts.missing()) == {"host", "vm"}
    with pytest.raises(ConfigurationError) as info:
        opts.check()
    assert "host" in str(info.value) and "vm" in str(info.value)


def test_restore_options_are_accepted_and_defaulted() -> None:
    opts = PluginOptions()
    assert opts.get("restore_local") is None
    opts.add_definition("restore_local=no:source=files:paths=/x:")
    opts.check()
    assert opts.get_bool("restore_local") is False
    assert all(k.startswith("restore_") for k, s in OPTIONS.items() if "restore" in k)


@pytest.mark.parametrize(("where", "definition", "target"), [
    ("", "", RestoreTarget.HYPERV),
    ("/", "", RestoreTarget.HYPERV),
    ("/tmp/x", "", RestoreTarget.DIRECTORY),
    ("/tmp/x", "restore_to=hyperv:", RestoreTarget.HYPERV),
    ("", "restore_to=directory:", RestoreTarget.DIRECTORY),
    ("", "restore_local=yes:", RestoreTarget.DIRECTORY),
    ("/tmp/x", "restore_local=no:", RestoreTarget.HYPERV),
])
def test_restore_target_follows_where_unless_an_option_says_otherwise(where: str, definition: str,
                                                                      target: RestoreTarget) -> None:
    opts = PluginOptions()
    opts.add_definition("host=h:vm=v:" + definition)
    assert opts.restore_options(where).target is target


def test_restore_options_are_typed_once() -> None:
    opts = PluginOptions()
    opts.add_definition("restore_host=HV02:restore_vm_name=web01-copy:restore_new_id=yes:"
                        "restore_switch_map=LAN=Prod,DMZ=Edge:restore_missing_switch=disconnect:"
                        "restore_disk_map=web01-data.vhdx=D\\:\\VMs:restore_dry_run=yes:restore_vm=web01,db01:"
                        "host=HVCLUSTER01:vm=web01:")
    r = opts.restore_options("")
    assert (r.host, r.vm_name, r.new_id, r.dry_run, r.vms) == ("HV02", "web01-copy", True, True, ["web01", "db01"])
    assert [(m.source, m.target) for m in r.switch_map] == [("LAN", "Prod"), ("DMZ", "Edge")]
    assert r.mapped_switch("lan") == "Prod" and r.mapped_switch("WAN") is None
    assert r.missing_switch is MissingSwitch.DISCONNECT
    assert r.new_id is True and r.cluster_role is None and r.overwrite is False


def test_bad_restore_options_are_refused_together_naming_each() -> None:
    opts = PluginOptions()
    opts.add_definition("host=h:vm=v:restore_overwrite=yes:restore_new_id=yes:restore_switch_map=LAN:"
                        "restore_dry_run=yes:restore_start=yes:restore_to=directory:restore_local=no:")
    with pytest.raises(ConfigurationError) as info:
        opts.restore_options("")
    text = str(info.value)
    for needle in ("restore_overwrite=yes", "restore_new_id=yes", "restore_switch_map: 'LAN'",
                   "restore_start=yes contradicts restore_dry_run=yes", "restore_to=directory contradicts"):
        assert needle in text
    with pytest.raises(ConfigurationError, match="restore_missing_switch=drop is not one of"):
        opts.add_definition("restore_missing_switch=drop:")


def test_agent_receives_strings_without_fd_only_options() -> None:
    opts = PluginOptions()
    opts.add_definition("source=files:paths=/a,/b:agent_python=/usr/bin/python3:smb_port=4455:")
    sent = opts.for_agent()
    assert sent["paths"] == "/a,/b" and sent["smb_port"] == "4455"
    assert sent["smb_encrypt"] == "no" and "restore_local" not in sent
    assert "agent_python" not in sent
