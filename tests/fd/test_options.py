"""Plugin options: declared types, first value wins, every problem named with what to write."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.fd.options import OPTIONS, PluginOptions, split_definition
from bareos_hyperv.model.backup import ConsistencyMode
from bareos_hyperv.model.options import (
    BackupOptions,
    ConnectionOptions,
    DataPlane,
    FilesOptions,
    HostEndpoint,
    JobOptions,
    MapEntry,
    SmbMover,
    SmbShareOptions,
    WinrmTransport,
)
from bareos_hyperv.protocol.messages import MissingSwitch, RestoreOptions, RestoreTarget


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


def test_agent_receives_typed_options_of_its_source_only() -> None:
    opts = PluginOptions()
    opts.add_definition("source=files:paths=/a, /b:agent_python=/usr/bin/python3:smb_port=4455:")
    sent = opts.job_options()
    assert sent.files == FilesOptions(paths=("/a", "/b"))
    assert sent.backup is None and sent.smb is None  # the other sources' parts are not sent
    assert sent.connection == ConnectionOptions() and sent.timeout == 1800 and sent.debug is False
    # fd-only and restore-only options are no part of what the agent receives
    names = {f.name for f in dataclasses.fields(JobOptions)}
    assert not names & {"agent_python", "agent_timeout", "username", "restore_local"}


C = "connection"
B = "backup"


@pytest.mark.parametrize(("definition", "part", "field", "expected"), [
    ("transport=kerberos", C, "transport", WinrmTransport.KERBEROS),
    ("https=yes", C, "https", True),
    ("port=15985", C, "port", 15985),
    ("ca_trust_path=/etc/ssl/hv.pem", C, "ca_trust_path", "/etc/ssl/hv.pem"),
    ("cert_validation=no", C, "cert_validation", False),
    ("host_map=HV01=10.0.0.5#5985,hv02=hv02.lab", C, "host_map",
     (HostEndpoint("HV01", "10.0.0.5", 5985), HostEndpoint("HV02", "hv02.lab", None))),
    ("smb_host_map=HV01=10.0.0.5#445", C, "smb_host_map", (HostEndpoint("HV01", "10.0.0.5", 445),)),
    ("data=local", C, "data", DataPlane.LOCAL),
    ("share_map=C$/ClusterStorage=//fs/csv;HV01/D$/VMs=//hv01/vms", C, "share_map",
     (MapEntry("C:\\ClusterStorage", "\\\\fs\\csv"), MapEntry("D:\\VMs", "\\\\hv01\\vms", "HV01"))),
    ("path_map=C$/ClusterStorage/Volume1=/mnt/csv1", C, "path_map",
     (MapEntry("C:\\ClusterStorage\\Volume1", "/mnt/csv1"),)),
    ("smb_encrypt=yes", C, "smb_encrypt", True),
    ("smb_mover=smbclient", C, "smb_mover", SmbMover.SMBCLIENT),
    ("host=HVCLUSTER01", B, "host", "HVCLUSTER01"),
    ("vm=web01, db*,Finance\\, Paris", B, "vms", ("web01", "db*", "Finance, Paris")),
    ("exclude_vm=db-test,old*", B, "exclude", ("db-test", "old*")),
    ("consistency=application-required", B, "consistency", ConsistencyMode.APPLICATION_REQUIRED),
    ("staging_path=C$/ClusterStorage/stage", B, "staging_path", "C:\\ClusterStorage\\stage"),
    ("timeout=600", None, "timeout", 600),
    ("credentials_file=/etc/bareos/hv.cred", None, "credentials_file", "/etc/bareos/hv.cred"),
    ("agent_debug=yes", None, "debug", True),
])
def test_each_agent_option_is_typed_by_the_fd(definition: str, part: Optional[str], field: str,
                                             expected: object) -> None:
    opts = PluginOptions()
    opts.add_definition(definition + ":host=h:vm=v:")
    opts.check()
    sent = opts.job_options()
    holder = sent if part is None else getattr(sent, part)
    assert getattr(holder, field) == expected
    # Unset, the field holds the model's default, which is also the option table's default.
    default = PluginOptions()
    default.add_definition("host=h:vm=v:")
    unset = default.job_options()
    key = definition.partition("=")[0]
    if OPTIONS[key].default is not None and part is not None:
        model_default = getattr(getattr(unset, part), field)
        assert OPTIONS[key].default == getattr(model_default, "value", model_default)


def test_the_smb_source_options_are_typed() -> None:
    opts = PluginOptions()
    opts.add_definition("source=smb:smb_server=HV01:smb_share=C$:smb_paths=VMs/web01, /ISO/:smb_address=10.0.0.5:"
                        "smb_port=4455:smb_encrypt=yes:")
    opts.check()
    sent = opts.job_options()
    assert sent.smb == SmbShareOptions(server="HV01", share="C$", paths=("VMs\\web01", "ISO"), address="10.0.0.5",
                                       port=4455)
    assert sent.connection.smb_encrypt is True and sent.backup is None and sent.files is None


def test_defaults_are_written_once_in_the_model() -> None:
    """The option table's defaults are the typed options' defaults (one place)."""
    assert OPTIONS["timeout"].default == JobOptions().timeout
    assert OPTIONS["agent_debug"].default is JobOptions().debug
    assert OPTIONS["transport"].default == ConnectionOptions().transport.value
    assert OPTIONS["data"].default == ConnectionOptions().data.value
    assert OPTIONS["consistency"].default == BackupOptions().consistency.value
    assert OPTIONS["restore_missing_switch"].default == RestoreOptions().missing_switch.value
    assert OPTIONS["transport"].choices == tuple(t.value for t in WinrmTransport)


@pytest.mark.parametrize(("definition", "fragment"), [
    ("port=59x", "option port=59x is not a whole number"),
    ("https=maybe", "option https=maybe is not a yes/no value"),
    ("transport=digest", "option transport=digest is not one of ntlm, kerberos, credssp, basic"),
    ("data=nfs", "option data=nfs is not one of smb, local"),
    ("consistency=vss", "option consistency=vss is not one of application, application-required, crash"),
    ("smb_mover=fast", "option smb_mover=fast is not one of smbprotocol, auto, smbclient"),
    ("host_map=HV01", "option host_map: entry 'HV01' is not NODE=address or NODE=address#port"),
    ("smb_host_map=HV01=10.0.0.5#99999", "option smb_host_map: entry 'HV01=10.0.0.5#99999' has no address or an "
                                         "invalid port '99999'"),
    ("share_map=nonsense", "option share_map: share map entry 'nonsense' is not 'prefix=target'"),
    ("share_map=C$/VMs=relative", "option share_map: share map entry C:\\VMs=relative: the target is not a UNC path"),
    ("share_map=VMs=//fs/vms", "the prefix is not an absolute Windows path"),  # named with the entry
    ("path_map=C$/VMs=mnt/vms", "option path_map: path map entry C:\\VMs=mnt/vms: the target must be an absolute "
                                "local directory"),
    ("path_map=C$/VMs=/mnt/../etc", "the target must be an absolute local directory"),
])
def test_bad_agent_option_values_are_refused_by_the_fd_naming_the_option(definition: str, fragment: str) -> None:
    opts = PluginOptions()
    opts.collect_definition(definition + ":host=h:vm=v:")
    with pytest.raises(ConfigurationError) as info:
        opts.check()
    assert fragment in str(info.value)
    with pytest.raises(ConfigurationError) as again:
        opts.job_options()  # nothing untyped reaches the agent
    assert str(again.value) == str(info.value)


def test_bad_map_values_are_reported_together_with_the_other_problems() -> None:
    opts = PluginOptions()
    opts.collect_definition("host=h:vm=v:share_map=nonsense:path_map=C$/VMs=rel:port=x:")
    with pytest.raises(ConfigurationError) as info:
        opts.check()
    text = str(info.value)
    assert "has 3 problems" in text
    assert "option share_map:" in text and "option path_map:" in text and "option port=x" in text
