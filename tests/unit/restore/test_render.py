"""The plan as job-log lines: readable tables, Compare-VM style incompatibilities, safe line lengths."""

from __future__ import annotations

import dataclasses
from typing import List

import pytest

from bareos_hyperv.model.restore import MissingSwitch, RestoreOptions, SwitchMapping
from bareos_hyperv.model.vm import PowerState
from bareos_hyperv.restore.plan import VmPlan, make_plan
from bareos_hyperv.restore.render import MAX_LINE, render_plan

from .builders import (
    CSV1,
    CSV2,
    JOB,
    WEB_DATA_BASE,
    WEB_ISO,
    WEB_SYSTEM,
    GiB,
    cluster_facts,
    disk_file,
    existing,
    legacy01_manifest,
    same_cluster,
    standalone,
    web01_manifest,
)


def lines_of(plan: VmPlan) -> List[str]:
    lines = render_plan(plan)
    for line in lines:
        assert len(line) < 200, line
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
    return lines


def test_ready_plan_shows_every_decision() -> None:
    plan = make_plan(web01_manifest(), RestoreOptions(), same_cluster(), job_id=JOB)
    lines = lines_of(plan)
    text = "\n".join(lines)
    assert lines[0] == ("Restore plan: VM 'web01' (5B2C8E61-0F3A-4C5D-9E7B-1A2B3C4D5E6F) from backup job 4711 -> "
                        "cluster HVCLUSTER01, node HV01 (the original owner)")
    assert "  Name        'web01' (kept)" in lines
    assert "  Cluster     highly available in HVCLUSTER01 (restore_cluster_role)" in lines
    assert "  Processors  4 (host: 16 logical)" in lines
    assert "  Memory      4096 MB at startup, dynamic (host: 65536 MB)" in lines
    assert f"  Config      {CSV1}\\web01 (same path as at backup, free)" in lines
    assert "  Slot      File        Size  Why" in lines
    assert "  SCSI 0:0  0       10.0 GiB  same path as at backup, free" in lines
    assert f"            to    {WEB_SYSTEM}" in lines
    assert f"            parent {WEB_DATA_BASE}" in lines
    assert "  'Network Adapter' (00155D010203, static MAC): 'External-LAN' -> 'External-LAN': kept" in lines
    assert "  'Spare' (000000000000): (none): not connected at backup" in lines
    assert "Space:" in lines and any(line.startswith(f"  {CSV2}") and "21.0 GiB" in line for line in lines)
    assert lines[-1] == "Result: ready to restore"
    assert "Incompatibilities" not in text


def test_refused_plan_lists_incompatibilities_with_what_resolves_them() -> None:
    dest = standalone(volume_free={"D:\\": GiB})
    plan = make_plan(web01_manifest(), RestoreOptions(host="HVSTANDALONE01"), dest, job_id=JOB)
    lines = lines_of(plan)
    start = lines.index(f"Incompatibilities ({len(plan.problems)}): nothing is written until each one is resolved")
    body = lines[start + 1:-1]
    assert body[0].startswith("  1. could not find Ethernet switch 'External-LAN' on HVSTANDALONE01")
    resolves = [line for line in body if line.startswith("     Resolve: ")]
    assert len(resolves) == len(plan.problems)
    assert any("restore_missing_switch=disconnect" in line for line in body)
    assert any("not enough space on D:\\" in line for line in body)
    assert lines[-1] == f"Result: refused, {len(plan.problems)} incompatibilities to resolve"
    assert "  Name        'web01' (kept)" in lines and "  Cluster" not in "\n".join(lines)


def test_one_incompatibility_is_singular_and_notes_are_listed() -> None:
    dest = same_cluster(vms=[existing(state=PowerState.RUNNING)], files=[WEB_SYSTEM, WEB_ISO])
    plan = make_plan(web01_manifest(), RestoreOptions(overwrite=True), dest, job_id=JOB)
    lines = lines_of(plan)
    assert lines[-1] == "Result: refused, 1 incompatibility to resolve"
    assert any(line.startswith("  Replaces    'web01'") for line in lines)
    assert "Notes:" in lines and any(line.startswith("  - ") for line in lines)
    assert any("replaces the overwritten VM's file after verification" in line for line in lines)


def test_renames_moves_and_switch_maps_read_well() -> None:
    dest = same_cluster(vms=[existing()], files=[WEB_SYSTEM, WEB_ISO])
    options = RestoreOptions(new_id=True, vm_name="web01-copy", storage=CSV2,
                             switch_map=[SwitchMapping("Internal-Backup", "External-LAN")])
    plan = make_plan(web01_manifest(), options, dest, job_id=JOB)
    lines = lines_of(plan)
    assert "  Name        'web01' -> 'web01-copy' (restore_vm_name)" in lines
    assert any(line.startswith("  ID          new ID") for line in lines)
    assert "  'Backup NIC' (00155D010204): 'Internal-Backup' -> 'External-LAN': mapped (restore_switch_map)" in lines
    assert any(line.endswith("  restore_storage") for line in lines)


def test_dropped_devices_and_unknown_space() -> None:
    options = RestoreOptions(missing_switch=MissingSwitch.DISCONNECT)
    plan = make_plan(legacy01_manifest(), options, standalone(), job_id=JOB)
    lines = lines_of(plan)
    assert "Devices that do not come back as they were:" in lines
    assert any(line.startswith("  SCSI 0:1: left out: pass-through disk") for line in lines)
    assert any(line.startswith("  SCSI 0:2: left out: VHD Set") for line in lines)
    assert any("unknown" in line and line.startswith("  D:\\") for line in lines)
    assert "  Processors  2 (host: 8 logical)" in lines


@pytest.mark.parametrize("evil", ["evil\nResult: ready to restore", "x\x1b[2J\r", "bidi\u202etxt.exe", "z" * 5000])
def test_forged_values_cannot_forge_lines_or_overflow(evil: str) -> None:
    manifest = web01_manifest()
    manifest.vm.ref = dataclasses.replace(manifest.vm.ref, name=evil)
    manifest.vm.adapters[0].name = evil
    manifest.vm.adapters[0].switch_name = evil
    long_path = f"{CSV1}\\" + "\\".join(["deep" * 10] * 30) + "\\disk.vhdx"
    manifest.disks[0].chain[0] = disk_file(0, long_path, GiB)
    manifest.vm.drives[0].path = long_path
    plan = make_plan(manifest, RestoreOptions(), same_cluster(), job_id=JOB)
    lines = lines_of(plan)
    assert sum(1 for line in lines if line.startswith("Result:")) == 1
    assert lines[-1].startswith("Result: refused")
    assert all("\u202e" not in line for line in lines)
    assert any("\u2026" in line for line in lines)  # long values shortened in the middle


def test_every_line_is_short_for_many_shapes() -> None:
    cluster = cluster_facts(volumes=[(CSV1, GiB), (CSV2, GiB)])
    for manifest in (web01_manifest(), legacy01_manifest()):
        for dest in (same_cluster(), same_cluster(cluster=cluster), standalone()):
            for options in (RestoreOptions(), RestoreOptions(new_id=True, vm_name="n" * 100),
                            RestoreOptions(storage="\\\\fileserver\\" + "s" * 150 + "\\vms")):
                lines_of(make_plan(manifest, options, dest, job_id=2**31))
    assert MAX_LINE < 200
