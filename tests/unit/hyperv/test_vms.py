"""VM selection and the normalised view, on settings objects shaped as Hyper-V returns them."""

from __future__ import annotations

import pytest

from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv.vms import (
    AmbiguousVmName,
    VmNotFound,
    VmSettings,
    VmSummary,
    normalise,
    select_vms,
)
from bareos_hyperv.model.host import Switch
from bareos_hyperv.model.options import split_names
from bareos_hyperv.model.vm import ControllerKind, DriveKind, Generation, PowerState, VmRef
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference

G1 = "11111111-1111-4111-8111-111111111111"
G2 = "22222222-2222-4222-8222-222222222222"
G3 = "33333333-3333-4333-8333-333333333333"


def _vm(guid: str, name: str) -> VmSummary:
    epr = EndpointReference.build(C.NS_VIRT, C.COMPUTER_SYSTEM, {"CreationClassName": C.COMPUTER_SYSTEM, "Name": guid})
    return VmSummary(VmRef(guid, name), PowerState.RUNNING, "HV01", epr)


VMS = [_vm(G1, "web01"), _vm(G2, "web02"), _vm(G3, "DB01")]


def test_select_by_name_guid_pattern_and_exclusion() -> None:
    assert [v.ref.name for v in select_vms(VMS, ["db01"])] == ["DB01"]
    assert [v.ref.name for v in select_vms(VMS, ["{" + G2.lower() + "}"])] == ["web02"]
    assert [v.ref.name for v in select_vms(VMS, ["web*"], ["web02"])] == ["web01"]
    assert [v.ref.name for v in select_vms(VMS, ["*", "web01"])] == ["web01", "web02", "DB01"]


def test_duplicate_names_are_refused_but_patterns_and_guids_work() -> None:
    dup = [*VMS, _vm("44444444-4444-4444-8444-444444444444", "web01")]
    with pytest.raises(AmbiguousVmName) as info:
        select_vms(dup, ["web01"], where="HV01")
    assert "GUID" in str(info.value) and G1 in str(info.value)
    assert len(select_vms(dup, ["web0?"])) == 3


@pytest.mark.parametrize("wanted", [["nosuch"], ["nomatch*"], ["99999999-9999-4999-8999-999999999999"]])
def test_nothing_matching_is_an_error_naming_the_item(wanted: list[str]) -> None:
    with pytest.raises(VmNotFound) as info:
        select_vms(VMS, wanted)
    assert wanted[0] in str(info.value)


G4 = "44444444-4444-4444-8444-444444444444"
G5 = "55555555-5555-4555-8555-555555555555"
G6 = "66666666-6666-4666-8666-666666666666"
ODD = [_vm(G1, "web[1]"), _vm(G2, "web1"), _vm(G3, "Finance, Paris"), _vm(G4, "test*"), _vm(G5, "testing"),
       _vm(G6, "Café Müller")]


def test_split_names_keeps_escaped_commas_and_backslashes() -> None:
    assert split_names("web01, db01 ,,") == ("web01", "db01")
    assert split_names(r"Finance\, Paris,web01") == ("Finance, Paris", "web01")
    assert split_names(r"a\\b,c\d") == ("a\\b", "c\\d")
    assert split_names("") == ()


def test_an_exact_name_wins_over_a_pattern() -> None:
    # 'web[1]' as a pattern would match web1; the VM named 'web[1]' is meant.
    assert [v.ref.guid for v in select_vms(ODD, ["web[1]"])] == [G1]
    assert [v.ref.guid for v in select_vms(ODD, ["TEST*"])] == [G4]
    assert [v.ref.guid for v in select_vms(ODD, ["finance, paris"])] == [G3]
    # Unicode: NFD input (as some tools write it) names the NFC name.
    assert [v.ref.guid for v in select_vms(ODD, ["Cafe\u0301 mu\u0308ller"])] == [G6]
    # A pattern still works when no VM has that name, and exclusions follow the same rule.
    assert [v.ref.guid for v in select_vms(ODD, ["web?"])] == [G2]
    assert [v.ref.guid for v in select_vms(ODD, ["test*ing"])] == [G5]
    assert [v.ref.guid for v in select_vms(ODD, ["t*"], ["test*"])] == [G5]
    assert [v.ref.guid for v in select_vms(ODD, ["w*"], ["web[1]"])] == [G2]


def test_no_match_names_the_pattern_characters_and_the_guid() -> None:
    with pytest.raises(VmNotFound) as info:
        select_vms(ODD, ["db[2]"], where="HV01")
    text = str(info.value)
    assert "db[2]" in text and "[...]" in text and "*" in text and "?" in text and "GUID" in text


def test_a_comma_that_split_a_name_is_pointed_out() -> None:
    with pytest.raises(VmNotFound) as info:
        select_vms(ODD, split_names("Finance, Paris"))
    text = str(info.value)
    assert "no VM matches 'Finance'" in text and "'Finance' and 'Paris' together" in text and G3 in text
    assert "\\\\," in text  # how to write it in bareos-dir.conf


def _path(cls: str, **keys: str) -> str:
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2)}"' for k, v in keys.items())
    return f"\\\\HV01\\root\\virtualization\\v2:{cls}.{body}"


def test_normalise_builds_controllers_drives_and_adapters() -> None:
    vid = f"Microsoft:{G1}"
    scsi = CimInstance(C.RASD, {"InstanceID": f"{vid}\\SCSI0", "ResourceType": 6,
                                "ResourceSubType": C.SubType.SCSI_CONTROLLER})
    drive = CimInstance(C.RASD, {"InstanceID": f"{vid}\\D0", "ResourceType": 17, "AddressOnParent": "1",
                                 "ResourceSubType": C.SubType.DISK_DRIVE,
                                 "Parent": _path(C.RASD, InstanceID=f"{vid}\\SCSI0")})
    vhd = CimInstance(C.SASD, {"InstanceID": f"{vid}\\D0\\L", "ResourceType": 31,
                               "ResourceSubType": C.SubType.VIRTUAL_HARD_DISK,
                               "Parent": _path(C.RASD, InstanceID=f"{vid}\\D0"),
                               "HostResource": ["C:\\ClusterStorage\\Volume1\\web01\\a.vhdx"]})
    dvd = CimInstance(C.RASD, {"InstanceID": f"{vid}\\DVD", "ResourceType": 16, "AddressOnParent": "2",
                               "ResourceSubType": C.SubType.DVD_DRIVE,
                               "Parent": _path(C.RASD, InstanceID=f"{vid}\\SCSI0")})
    nic = CimInstance(C.SYNTHETIC_NIC_SD, {"InstanceID": f"{vid}\\NIC", "ResourceType": 10,
                                           "ResourceSubType": C.SubType.SYNTHETIC_NIC, "ElementName": "LAN",
                                           "Address": "00155d0a0001", "StaticMacAddress": True})
    conn = CimInstance(C.EPASD, {"InstanceID": f"{vid}\\NIC\\C", "ResourceType": 33, "EnabledState": 2,
                                 "Parent": _path(C.SYNTHETIC_NIC_SD, InstanceID=f"{vid}\\NIC"),
                                 "HostResource": [_path(C.SWITCH, CreationClassName=C.SWITCH, Name="SW-GUID")]})
    cpu = CimInstance(C.PROCESSOR_SD, {"ResourceType": 3, "VirtualQuantity": 4})
    mem = CimInstance(C.MEMORY_SD, {"ResourceType": 4, "VirtualQuantity": 8192, "DynamicMemoryEnabled": True})
    system = CimInstance(C.VSSD, {"InstanceID": vid, "VirtualSystemSubType": "Microsoft:Hyper-V:SubType:2",
                                  "Version": "9.0", "ConfigurationDataRoot": "C:\\CS\\V1\\web01"})
    cfg = normalise(VMS[0], VmSettings(system, [scsi, drive, vhd, dvd, nic, conn, cpu, mem]),
                    [Switch("External-LAN", "sw-guid")])
    assert cfg.generation is Generation.GEN2 and cfg.version == "9.0"
    assert (cfg.processors, cfg.memory_mb, cfg.dynamic_memory) == (4, 8192, True)
    kinds = [(d.kind, d.slot.controller, d.slot.location, d.path) for d in cfg.drives]
    assert kinds == [(DriveKind.VIRTUAL_DISK, ControllerKind.SCSI, 1, "C:\\ClusterStorage\\Volume1\\web01\\a.vhdx"),
                     (DriveKind.DVD, ControllerKind.SCSI, 2, None)]
    (adapter,) = cfg.adapters
    assert (adapter.switch_name, adapter.mac, adapter.static_mac, adapter.connected) == (
        "External-LAN", "00155D0A0001", True, True)


def test_wql_literal_escapes_quotes_and_backslashes() -> None:
    assert C.wql_literal("it's C:\\x") == "'it\\'s C:\\\\x'"
    assert C.wql_literal(111) == "111"
    assert C.wql_literal(True) == "TRUE"
