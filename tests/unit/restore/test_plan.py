"""The restore planner against many destination shapes (pure: manifests and facts built in memory)."""

from __future__ import annotations

import builtins
import dataclasses
import socket
import time
from typing import Any, Dict, List

import pytest

from bareos_hyperv.manifest import from_xml, to_xml
from bareos_hyperv.model.cluster import NodeState, VmGroup
from bareos_hyperv.model.restore import DiskMapping, MissingSwitch, RestoreOptions, SwitchMapping
from bareos_hyperv.model.vm import Generation, PowerState
from bareos_hyperv.restore import safety
from bareos_hyperv.restore.plan import (
    STAGING_PREFIX,
    CandidateFolder,
    DeviceAction,
    DiskReason,
    SwitchDecision,
    VmPlan,
    candidate_folders,
    default_entry,
    format_size,
    make_plan,
    windows_versions_running,
)
from tests.unit.manifest.conftest import cluster_manifest

from .builders import (
    CSV1,
    CSV2,
    JOB,
    LEGACY_DATA,
    LEGACY_ROOT,
    LEGACY_SYSTEM,
    WEB01,
    WEB_DATA_BASE,
    WEB_DATA_LEAF,
    WEB_ISO,
    WEB_ROOT,
    WEB_SYSTEM,
    GiB,
    cluster_facts,
    destination,
    disk_file,
    existing,
    legacy01_manifest,
    node,
    same_cluster,
    standalone,
    web01_manifest,
)


def plan_of(manifest: Any = None, options: RestoreOptions | None = None, dest: Any = None) -> VmPlan:
    return make_plan(manifest or web01_manifest(), options or RestoreOptions(), dest or same_cluster(), job_id=JOB)


def dests(plan: VmPlan) -> Dict[str, str]:
    """Source path -> destination path."""
    return {d.source_path: d.dest_path for d in plan.disks}


def reasons(plan: VmPlan) -> Dict[str, DiskReason]:
    return {d.source_path: d.reason for d in plan.disks}


def problem_text(plan: VmPlan) -> str:
    return "\n".join(f"{p.message} || {p.resolve}" for p in plan.problems)


def assert_all_under_roots(plan: VmPlan) -> None:
    for disk in plan.disks:
        if disk.dest_path:
            assert safety.is_under(disk.dest_path, disk.dest_root), disk
    if plan.staging_folder:
        assert safety.is_under(plan.staging_folder, plan.config_root)
    for config in plan.config_files:
        assert safety.is_under(config.dest_path, plan.staging_folder)


# --------------------------------------------------------------------------- same cluster


def test_same_cluster_vm_deleted_restores_in_place() -> None:
    plan = plan_of()
    assert plan.ok, problem_text(plan)
    assert plan.keep_id and plan.overwrite is None and plan.name == "web01"
    assert (plan.node, plan.node_reason, plan.cluster, plan.cluster_role) == ("HV01", "the original owner",
                                                                                "HVCLUSTER01", True)
    assert plan.config_root == WEB_ROOT
    assert plan.staging_folder == f"{WEB_ROOT}\\{STAGING_PREFIX}{JOB}"
    assert [c.dest_path for c in plan.config_files] == [
        f"{plan.staging_folder}\\Virtual Machines\\{WEB01}.vmcx",
        f"{plan.staging_folder}\\Virtual Machines\\{WEB01}.vmgs"]
    assert dests(plan) == {WEB_SYSTEM: WEB_SYSTEM, WEB_DATA_LEAF: WEB_DATA_LEAF, WEB_DATA_BASE: WEB_DATA_BASE}
    assert set(reasons(plan).values()) == {DiskReason.SAME_PATH_FREE}
    leaf, base = plan.disks[1], plan.disks[2]
    assert (leaf.parent_dest_path, leaf.chain_position) == (WEB_DATA_BASE, 0)
    assert (base.parent_dest_path, base.chain_position) == (None, 1)
    assert str(leaf.slot) == "SCSI 0:1" and leaf.size == GiB and leaf.sha256
    assert [(a.name, a.dest_switch, a.decision) for a in plan.adapters] == [
        ("Network Adapter", "External-LAN", SwitchDecision.KEPT),
        ("Backup NIC", "Internal-Backup", SwitchDecision.KEPT),
        ("Spare", None, SwitchDecision.WAS_DISCONNECTED)]
    assert plan.dropped == ()  # the ISO exists at the destination
    volumes = {v.volume: (v.needed, v.free) for v in plan.volumes}
    assert volumes == {CSV1: (10 * GiB + 4 * 2**20, 1200 * GiB), CSV2: (21 * GiB, 800 * GiB)}
    assert (plan.config_version, plan.generation, plan.processors) == ("9.0", Generation.GEN2, 4)
    assert plan.removed_files == () and not plan.force_off
    assert_all_under_roots(plan)


def test_same_cluster_vm_still_there_is_refused_naming_both_options() -> None:
    plan = plan_of(dest=same_cluster(vms=[existing(state=PowerState.RUNNING)]))
    assert not plan.ok
    text = problem_text(plan)
    assert f"a VM with the ID {WEB01} already exists" in text
    assert "restore_new_id=yes" in text and "restore_overwrite=yes" in text
    assert "already has a role named 'web01'" in text  # role names are unique in a cluster


def test_restore_new_id_no_with_the_id_taken_says_so() -> None:
    plan = plan_of(options=RestoreOptions(new_id=False), dest=same_cluster(vms=[existing()]))
    assert "restore_new_id=no keeps the ID" in problem_text(plan)


def test_next_to_the_original_with_new_id_and_rename() -> None:
    original = existing(state=PowerState.RUNNING)
    dest = same_cluster(vms=[original], files=[WEB_SYSTEM, WEB_DATA_LEAF, WEB_DATA_BASE, WEB_ISO])
    plan = plan_of(options=RestoreOptions(new_id=True, vm_name="web01-copy"), dest=dest)
    assert plan.ok, problem_text(plan)
    assert not plan.keep_id and plan.name == "web01-copy" and plan.overwrite is None
    assert dests(plan) == {
        WEB_SYSTEM: f"{CSV1}\\web01\\Virtual Hard Disks\\web01-system-restored-{JOB}.vhdx",
        WEB_DATA_LEAF: f"{CSV2}\\web01\\Virtual Hard Disks\\web01-data_1A2B-restored-{JOB}.avhdx",
        WEB_DATA_BASE: f"{CSV2}\\web01\\Virtual Hard Disks\\web01-data-restored-{JOB}.vhdx",
    }
    assert set(reasons(plan).values()) == {DiskReason.RENAMED_EXISTS}
    assert {d.folder_reason for d in plan.disks} == {DiskReason.SAME_PATH_FREE}
    assert plan.disks[1].parent_dest_path == dests(plan)[WEB_DATA_BASE]  # the chain follows the rename
    assert any("gets a new ID" in n for n in plan.notes)
    assert any("static MAC address 00155D010203" in n for n in plan.notes)
    assert_all_under_roots(plan)


def test_new_id_without_rename_in_a_cluster_collides_with_the_role_name() -> None:
    plan = plan_of(options=RestoreOptions(new_id=True), dest=same_cluster(vms=[existing()]))
    assert len(plan.problems) == 1
    assert "role named 'web01'" in plan.problems[0].message and "restore_vm_name" in plan.problems[0].resolve


def test_new_id_without_rename_on_a_standalone_host_is_a_note() -> None:
    other = existing(LEGACY01 := "D99A57FE-9F2F-44EE-B15F-BF6C5D740D1C", "legacy01", node_name="HVSTANDALONE01",
                     config_root=LEGACY_ROOT, disks=[LEGACY_SYSTEM], group=None)
    plan = plan_of(legacy01_manifest(), RestoreOptions(new_id=True), standalone(vms=[other], files=[LEGACY_SYSTEM]))
    assert plan.ok, problem_text(plan)
    assert any("another VM named 'legacy01'" in n for n in plan.notes)
    assert reasons(plan)[LEGACY_SYSTEM] is DiskReason.RENAMED_EXISTS
    assert reasons(plan)[LEGACY_DATA] is DiskReason.SAME_PATH_FREE
    assert other.guid == LEGACY01


def test_rename_skips_names_that_exist_too() -> None:
    renamed = f"{CSV1}\\web01\\Virtual Hard Disks\\web01-system-restored-{JOB}.vhdx"
    dest = same_cluster(files=[WEB_SYSTEM, renamed, renamed.replace(".vhdx", "-2.vhdx")])
    plan = plan_of(dest=dest)
    assert dests(plan)[WEB_SYSTEM] == renamed.replace(".vhdx", "-3.vhdx")


def test_existing_files_compare_case_insensitively() -> None:
    plan = plan_of(dest=same_cluster(files=[WEB_SYSTEM.upper()]))
    assert reasons(plan)[WEB_SYSTEM] is DiskReason.RENAMED_EXISTS


# --------------------------------------------------------------------------- overwrite


def test_overwrite_a_running_vm_is_refused_without_force_off() -> None:
    dest = same_cluster(vms=[existing(state=PowerState.RUNNING)], files=[WEB_SYSTEM, WEB_ISO])
    plan = plan_of(options=RestoreOptions(overwrite=True), dest=dest)
    assert [p.message for p in plan.problems] == [
        f"the VM to overwrite, web01 ({WEB01}) on HV01, is running; "
        "restore_overwrite=yes replaces only a VM that is off"]
    assert "restore_force_off=yes" in plan.problems[0].resolve


def test_overwrite_a_running_vm_with_force_off() -> None:
    dest = same_cluster(vms=[existing(state=PowerState.SAVED)], files=[WEB_SYSTEM, WEB_ISO])
    plan = plan_of(options=RestoreOptions(overwrite=True, force_off=True), dest=dest)
    assert plan.ok, problem_text(plan)
    assert plan.force_off and plan.overwrite is not None and plan.overwrite.state is PowerState.SAVED
    assert any("turned off (restore_force_off=yes)" in n for n in plan.notes)


def test_overwrite_an_off_vm_replaces_its_files_after_verification() -> None:
    old = existing(disks=[WEB_SYSTEM, f"{CSV2}\\web01\\Virtual Hard Disks\\web01-data_9999.avhdx"])
    dest = same_cluster(vms=[old], files=[WEB_SYSTEM, WEB_DATA_BASE, WEB_ISO])
    plan = plan_of(options=RestoreOptions(overwrite=True), dest=dest)
    assert plan.ok, problem_text(plan)
    assert plan.keep_id and plan.overwrite == old and not plan.force_off
    assert reasons(plan) == {WEB_SYSTEM: DiskReason.REPLACES_OVERWRITTEN,
                             WEB_DATA_LEAF: DiskReason.SAME_PATH_FREE,
                             # exists, but is not one of the old VM's drive files: never replaced
                             WEB_DATA_BASE: DiskReason.RENAMED_EXISTS}
    assert dests(plan)[WEB_SYSTEM] == WEB_SYSTEM
    assert plan.removed_files == (f"{CSV2}\\web01\\Virtual Hard Disks\\web01-data_9999.avhdx",)
    assert any("removed only after the restored disks are written and verified" in n for n in plan.notes)


def test_overwrite_and_new_id_contradict() -> None:
    plan = plan_of(options=RestoreOptions(overwrite=True, new_id=True), dest=same_cluster(vms=[existing()]))
    assert any("contradict" in p.message and "restore_new_id=yes" in p.resolve for p in plan.problems)


def test_overwrite_with_nothing_to_overwrite_is_a_note() -> None:
    plan = plan_of(options=RestoreOptions(overwrite=True))
    assert plan.ok and plan.overwrite is None
    assert any("nothing is replaced" in n for n in plan.notes)


def test_config_left_by_an_unregistered_vm_blocks_keeping_the_id() -> None:
    leftover = f"{WEB_ROOT}\\Virtual Machines\\{WEB01}.vmcx"
    plan = plan_of(dest=same_cluster(files=[leftover, WEB_ISO]))
    assert "no such VM is registered" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(new_id=True), dest=same_cluster(files=[leftover, WEB_ISO]))
    assert plan.ok, problem_text(plan)


def test_an_existing_staging_folder_is_a_problem() -> None:
    plan = plan_of(dest=same_cluster(files=[f"{WEB_ROOT}\\{STAGING_PREFIX}{JOB}", WEB_ISO]))
    assert "staging folder" in problem_text(plan) and "interrupted restore" in problem_text(plan)


# --------------------------------------------------------------------------- nodes and roles


def test_restore_node_picks_another_node() -> None:
    plan = plan_of(options=RestoreOptions(node="hv02"))
    assert (plan.node, plan.node_reason) == ("HV02", "restore_node")
    assert plan.ok


def test_restore_host_naming_a_node_picks_that_node() -> None:
    plan = plan_of(dest=same_cluster(entry="HV02"))
    assert (plan.node, plan.node_reason, plan.cluster) == ("HV02", "named by restore_host", "HVCLUSTER01")


def test_restore_node_outside_the_cluster_and_node_down() -> None:
    plan = plan_of(options=RestoreOptions(node="HV07"))
    assert "restore_node=HV07 is not a node of cluster HVCLUSTER01 (its nodes: HV01, HV02)" in problem_text(plan)
    assert plan.node == "HV02"  # planning goes on with the default, so every other problem shows too
    cluster = cluster_facts(nodes=[("HV01", NodeState.UP), ("HV02", NodeState.PAUSED)])
    plan = plan_of(options=RestoreOptions(node="HV02"), dest=same_cluster(cluster=cluster))
    assert "restore_node=HV02 is paused in cluster HVCLUSTER01" in problem_text(plan)


def test_original_owner_down_picks_the_up_node_with_most_memory() -> None:
    cluster = cluster_facts(nodes=[("HV01", NodeState.DOWN), ("HV02", NodeState.UP), ("HV03", NodeState.UP)])
    hosts = [node("HV02", memory_mb=64 * 1024), node("HV03", memory_mb=256 * 1024)]
    plan = plan_of(dest=same_cluster(cluster=cluster, hosts=hosts))
    assert (plan.node, plan.node_reason) == ("HV03", "the up node with the most memory")


def test_no_node_up_is_a_problem() -> None:
    cluster = cluster_facts(nodes=[("HV01", NodeState.DOWN), ("HV02", NodeState.DOWN)])
    plan = plan_of(dest=same_cluster(cluster=cluster, hosts=[]))
    assert "no node of cluster HVCLUSTER01 is up" in problem_text(plan)
    assert plan.node == "" and plan.adapters  # still listed, unchecked


def test_cluster_role_contradictions_and_opt_out() -> None:
    plan = plan_of(legacy01_manifest(), RestoreOptions(cluster_role=True), standalone())
    assert "restore_cluster_role=yes, but the destination HVSTANDALONE01 is a standalone host" in problem_text(plan)
    plan = plan_of(legacy01_manifest(), RestoreOptions(node="HV01"), standalone())
    assert "restore_node=HV01 is not a node of the destination" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(cluster_role=False, new_id=True), dest=same_cluster(vms=[existing()]))
    assert plan.ok and not plan.cluster_role  # no role: its name cannot collide


# --------------------------------------------------------------------------- other cluster, other host


def other_cluster(free1: int = 895 * GiB, free2: int = 900 * GiB) -> Any:
    cluster = cluster_facts("HVCLUSTER02", nodes=[("HVB1", NodeState.UP), ("HVB2", NodeState.UP)],
                            volumes=[("C:\\ClusterStorage\\Disk1", free1), ("C:\\ClusterStorage\\Disk2", free2)])
    hosts = [node("HVB1", switches=["Prod", "Backup"], memory_mb=32 * 1024, build=20348),
             node("HVB2", switches=["Prod"], memory_mb=96 * 1024, build=20348)]
    return destination("HVCLUSTER02", cluster, hosts)


def test_other_cluster_with_other_csvs_and_a_switch_map() -> None:
    options = RestoreOptions(host="HVCLUSTER02", switch_map=[SwitchMapping("External-LAN", "Prod"),
                                                             SwitchMapping("Unused", "Prod")])
    plan = plan_of(options=options, dest=other_cluster())
    # HV01 is not a node of HVCLUSTER02: the node with the most memory; it lacks Internal-Backup.
    assert (plan.node, plan.node_reason) == ("HVB2", "the up node with the most memory")
    assert "could not find Ethernet switch 'Internal-Backup' on HVB2" in problem_text(plan)
    options = dataclasses.replace(options, node="HVB1", switch_map=[*options.switch_map,
                                                                    SwitchMapping("internal-backup", "Backup")])
    plan = plan_of(options=options, dest=other_cluster())
    assert plan.ok, problem_text(plan)
    # Most free space, counting what the plan already put there: config and system disk on Disk2
    # (900 GiB), then the data chain on Disk1 (895 GiB > 900 - 10 GiB); the same relative paths.
    assert plan.config_root == "C:\\ClusterStorage\\Disk2\\web01"
    assert dests(plan) == {
        WEB_SYSTEM: "C:\\ClusterStorage\\Disk2\\web01\\Virtual Hard Disks\\web01-system.vhdx",
        WEB_DATA_LEAF: "C:\\ClusterStorage\\Disk1\\web01\\Virtual Hard Disks\\web01-data_1A2B.avhdx",
        WEB_DATA_BASE: "C:\\ClusterStorage\\Disk1\\web01\\Virtual Hard Disks\\web01-data.vhdx",
    }
    assert set(reasons(plan).values()) == {DiskReason.CSV_BY_FREE_SPACE}
    assert plan.config_reason is DiskReason.CSV_BY_FREE_SPACE
    assert [(a.source_switch, a.dest_switch, a.decision) for a in plan.adapters[:2]] == [
        ("External-LAN", "Prod", SwitchDecision.MAPPED), ("Internal-Backup", "Backup", SwitchDecision.MAPPED)]
    assert any("'Unused'" in n and "not used" in n for n in plan.notes)
    assert any("HVB2 has no switch 'Backup'" in n and "failover" in n for n in plan.notes)
    assert any("has no C:\\ClusterStorage\\Volume1" in n for n in plan.notes)
    assert_all_under_roots(plan)


def test_switch_map_to_a_switch_the_node_lacks() -> None:
    options = RestoreOptions(switch_map=[SwitchMapping("External-LAN", "Nope")])
    plan = plan_of(options=options)
    assert "could not find Ethernet switch 'Nope' on HV01" in problem_text(plan)
    assert "(restore_switch_map External-LAN=Nope)" in problem_text(plan)


def test_clustered_vm_to_a_standalone_host_lacking_the_switches() -> None:
    dest = standalone(switches=["LAN"], volume_free={"D:\\": 100 * GiB})
    plan = plan_of(options=RestoreOptions(host="HVSTANDALONE01"), dest=dest)
    text = problem_text(plan)
    assert "could not find Ethernet switch 'External-LAN' on HVSTANDALONE01" in text
    assert "could not find Ethernet switch 'Internal-Backup'" in text
    assert "restore_missing_switch=disconnect" in text
    assert [a.decision for a in plan.adapters] == [SwitchDecision.MISSING, SwitchDecision.MISSING,
                                                   SwitchDecision.WAS_DISCONNECTED]
    plan = plan_of(options=RestoreOptions(missing_switch=MissingSwitch.DISCONNECT), dest=dest)
    assert plan.ok, problem_text(plan)
    assert [a.decision for a in plan.adapters] == [SwitchDecision.DISCONNECTED] * 2 + [SwitchDecision.WAS_DISCONNECTED]
    assert not plan.cluster_role and plan.cluster is None and plan.node == "HVSTANDALONE01"
    # CSV paths on a standalone host: the host's default folders, under the VM's name.
    assert plan.config_root == "D:\\Hyper-V\\web01"
    assert set(dests(plan).values()) == {
        "D:\\Hyper-V\\Virtual Hard Disks\\web01\\web01-system.vhdx",
        "D:\\Hyper-V\\Virtual Hard Disks\\web01\\web01-data_1A2B.avhdx",
        "D:\\Hyper-V\\Virtual Hard Disks\\web01\\web01-data.vhdx"}
    assert set(reasons(plan).values()) == {DiskReason.DEFAULT_PATH}
    assert [(v.volume, v.free) for v in plan.volumes] == [("D:\\", 100 * GiB)]
    iso = [d for d in plan.dropped if d.action is DeviceAction.EMPTIED]
    assert iso and "tools.iso is not on the destination" in iso[0].reason


def test_standalone_without_default_folders_needs_restore_storage() -> None:
    plan = plan_of(options=RestoreOptions(missing_switch=MissingSwitch.DISCONNECT),
                   dest=standalone(default_vhd="", default_vm=""))
    assert "set restore_storage" in problem_text(plan)
    assert all(d.dest_path == "" for d in plan.disks)


def test_standalone_vm_into_a_cluster_goes_to_shared_storage() -> None:
    options = RestoreOptions(host="HVCLUSTER01", switch_map=[SwitchMapping("LAN", "External-LAN")])
    plan = plan_of(legacy01_manifest(), options, same_cluster(files=[]))
    assert plan.ok, problem_text(plan)
    assert plan.cluster_role and plan.node == "HV02"  # most memory; the original host is not a node
    assert plan.config_root == f"{CSV1}\\legacy01"
    assert dests(plan) == {LEGACY_SYSTEM: f"{CSV1}\\legacy01\\Virtual Hard Disks\\legacy01-system.vhd",
                           LEGACY_DATA: f"{CSV1}\\legacy01\\Virtual Hard Disks\\legacy01-data.vhdx"}
    assert any("local storage" in n for n in plan.notes)
    dropped = {d.slot_or_name: d for d in plan.dropped}
    assert "pass-through" in dropped["SCSI 0:1"].reason and dropped["SCSI 0:1"].action is DeviceAction.REMOVED
    assert "VHD Set" in dropped["SCSI 0:2"].reason


def test_standalone_vm_to_its_own_host_keeps_local_paths() -> None:
    plan = plan_of(legacy01_manifest(), RestoreOptions(), standalone(volume_free={"d:\\": 50 * GiB}))
    assert plan.ok, problem_text(plan)
    assert dests(plan) == {LEGACY_SYSTEM: LEGACY_SYSTEM, LEGACY_DATA: LEGACY_DATA}
    assert [(v.volume, v.needed, v.free) for v in plan.volumes] == [("D:\\", 10 * GiB + 4 * 2**20, 50 * GiB)]


def test_a_host_without_the_volume_gets_its_default_folder() -> None:
    dest = standalone(name="HVOTHER", volume_free={"C:\\": 500 * GiB, "E:\\": 500 * GiB},
                      default_vhd="E:\\VHD", default_vm="E:\\VMs")
    plan = plan_of(legacy01_manifest(), RestoreOptions(host="HVOTHER"), dest)
    assert plan.config_root == "E:\\VMs\\legacy01"
    assert dests(plan)[LEGACY_SYSTEM] == "E:\\VHD\\legacy01\\legacy01-system.vhd"
    assert any("HVOTHER has no volume D:\\" in n for n in plan.notes)


# --------------------------------------------------------------------------- host limits


def test_unsupported_configuration_version_names_the_hosts_that_can() -> None:
    manifest = web01_manifest()
    manifest.vm.version = "10.0"
    plan = plan_of(manifest)
    (problem,) = plan.problems
    assert "configuration version 10.0 cannot run on HV01 (build 17763, runs 5.0" in problem.message
    assert "Windows Server 2022, Windows Server 2025" in problem.resolve
    hosts = [node("HV01"), node("HV02", build=20348)]
    plan = plan_of(manifest, dest=same_cluster(hosts=hosts))
    assert "in this cluster HV02 can: set restore_node=HV02" in problem_text(plan)
    plan = plan_of(manifest, RestoreOptions(node="HV02"), same_cluster(hosts=hosts))
    assert plan.ok, problem_text(plan)


def test_a_version_too_old_for_the_host_suggests_upgrading_elsewhere() -> None:
    manifest = legacy01_manifest()
    manifest.vm.version = "5.0"
    plan = plan_of(manifest, dest=standalone())
    assert "Update-VMVersion" in problem_text(plan)
    assert "Windows Server 2012 R2, Windows Server 2016, Windows Server 2019" in problem_text(plan)


def test_unknown_host_versions_are_a_note() -> None:
    dest = same_cluster()
    dest.hosts[0].facts.supported_config_versions.clear()
    plan = plan_of(dest=dest)
    assert plan.ok and any("version 9.0 is not checked" in n for n in plan.notes)


def test_generation_processors_and_memory_against_the_host() -> None:
    manifest = web01_manifest()
    manifest.vm.processors, manifest.vm.memory_mb = 32, 200 * 1024
    manifest.vm.version = "4.0"
    plan = plan_of(manifest, dest=standalone(build=9200, switches=["External-LAN", "Internal-Backup"]))
    text = problem_text(plan)
    assert "generation 2; HVSTANDALONE01 (build 9200) runs only generation 1 VMs" in text
    assert "32 virtual processors; HVSTANDALONE01 has 8 logical processors" in text
    assert f"needs {200 * 1024} MB of memory at startup; HVSTANDALONE01 has 32768 MB" in text
    unknown = standalone(memory_mb=None, cpus=None, switches=["External-LAN", "Internal-Backup"])
    plan = plan_of(manifest, dest=unknown)
    assert any("did not report its logical processors" in n for n in plan.notes)
    assert any("did not report its memory" in n for n in plan.notes)


# --------------------------------------------------------------------------- space


def test_not_enough_space_on_a_csv() -> None:
    cluster = cluster_facts(volumes=[(CSV1, 1200 * GiB), (CSV2, 5 * GiB)])
    plan = plan_of(dest=same_cluster(cluster=cluster))
    (problem,) = plan.problems
    assert problem.message == (f"not enough space on {CSV2}: the restore writes 21.0 GiB, 5.0 GiB is free")
    assert "restore_storage" in problem.resolve and "another CSV" in problem.resolve
    assert [v.short for v in plan.volumes] == [False, True]


def test_not_enough_space_on_a_local_volume_and_unknown_space() -> None:
    plan = plan_of(legacy01_manifest(), dest=standalone(volume_free={"D:\\": GiB}))
    assert "not enough space on D:\\: the restore writes 10.0 GiB, 1.0 GiB is free" in problem_text(plan)
    plan = plan_of(legacy01_manifest(), dest=standalone())
    assert plan.ok and any("free space on D:\\ is not known" in n for n in plan.notes)


def test_a_file_share_destination_is_planned_with_its_free_space_unknown_or_known() -> None:
    # Hyper-V over SMB: \\FS01\VMStore is neither a CSV nor a node's volume; a highly available VM may live
    # there, and without a figure for its free space the plan says so instead of refusing.
    share = "\\\\FS01\\VMStore"
    options = RestoreOptions(storage=share + "\\Restored")
    plan = plan_of(options=options, dest=same_cluster(files=[]))
    assert plan.ok, problem_text(plan)
    assert plan.config_root.startswith(share + "\\Restored\\")
    assert all(d.dest_path.startswith(share + "\\Restored\\") for d in plan.disks)
    (volume,) = plan.volumes
    assert volume.volume == share and volume.free is None and not volume.short
    assert any(n.startswith(f"free space on {share} is not known (an SMB file share") for n in plan.notes), plan.notes
    plan = plan_of(options=options, dest=dataclasses.replace(same_cluster(files=[]), volume_free={share.lower(): GiB}))
    assert f"not enough space on {share}: the restore writes" in problem_text(plan)


# --------------------------------------------------------------------------- restore_storage, restore_disk_map


def test_restore_storage_on_a_csv_puts_everything_under_the_vm_folder() -> None:
    plan = plan_of(options=RestoreOptions(storage=CSV2 + "\\"))
    assert plan.ok, problem_text(plan)
    assert plan.config_root == f"{CSV2}\\web01" and plan.config_reason is DiskReason.STORAGE
    folder = f"{CSV2}\\web01\\Virtual Hard Disks"
    assert dests(plan) == {WEB_SYSTEM: f"{folder}\\web01-system.vhdx",
                           WEB_DATA_LEAF: f"{folder}\\web01-data_1A2B.avhdx",
                           WEB_DATA_BASE: f"{folder}\\web01-data.vhdx"}
    assert set(reasons(plan).values()) == {DiskReason.STORAGE}
    assert [v.volume for v in plan.volumes] == [CSV2]


def test_restore_storage_problems() -> None:
    plan = plan_of(options=RestoreOptions(storage="D:\\VMs"))
    assert "local storage of one node" in problem_text(plan) and "restore_cluster_role=no" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(storage="C:\\ClusterStorage\\Volume9\\VMs"))
    assert "not a cluster shared volume of HVCLUSTER01" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(storage="VMs\\here"))
    assert "restore_storage 'VMs\\\\here' is not an absolute path" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(storage="D:\\VMs", cluster_role=False))
    assert plan.ok, problem_text(plan)


def test_restore_storage_folder_comes_from_a_safe_vm_name() -> None:
    plan = plan_of(options=RestoreOptions(storage=CSV2, vm_name="web01 / prod: CON"))
    assert plan.ok, problem_text(plan)
    assert plan.config_root == f"{CSV2}\\web01 _ prod_ CON"
    assert_all_under_roots(plan)


def test_restore_disk_map_by_slot_file_name_and_to_a_file() -> None:
    options = RestoreOptions(disk_map=[
        DiskMapping("scsi 0:1", f"{CSV1}\\data"),
        DiskMapping("web01-system.vhdx", f"{CSV2}\\sys\\renamed.vhdx"),
    ])
    plan = plan_of(options=options)
    assert plan.ok, problem_text(plan)
    assert dests(plan) == {WEB_SYSTEM: f"{CSV2}\\sys\\renamed.vhdx",
                           WEB_DATA_LEAF: f"{CSV1}\\data\\web01-data_1A2B.avhdx",
                           WEB_DATA_BASE: f"{CSV1}\\data\\web01-data.vhdx"}
    assert set(reasons(plan).values()) == {DiskReason.MAPPED}
    assert_all_under_roots(plan)


def test_restore_disk_map_by_source_path_of_a_parent_moves_the_whole_chain() -> None:
    plan = plan_of(options=RestoreOptions(disk_map=[DiskMapping(WEB_DATA_BASE.lower(), f"{CSV1}\\d")]))
    assert plan.ok
    assert dests(plan)[WEB_DATA_LEAF] == f"{CSV1}\\d\\web01-data_1A2B.avhdx"


def test_restore_disk_map_problems() -> None:
    options = RestoreOptions(disk_map=[
        DiskMapping("nothing.vhdx", f"{CSV1}\\x"),
        DiskMapping("SCSI 0:0", f"{CSV1}\\x\\system.vhd"),
        DiskMapping("SCSI 0:1", "relative\\folder"),
        DiskMapping("web01-data_1A2B.avhdx", f"{CSV2}\\y"),
    ])
    text = problem_text(plan_of(options=options))
    assert "restore_disk_map: 'nothing.vhdx' matches no disk of web01" in text
    assert "SCSI 0:0 web01-system.vhdx; SCSI 0:1 web01-data_1A2B.avhdx" in text
    assert "a file of another format" in text
    assert "restore_disk_map target of 'SCSI 0:1'" in text and "is not an absolute path" in text
    assert "maps the disk web01-data_1A2B.avhdx twice" in text


# --------------------------------------------------------------------------- chains and names


def test_a_chain_across_folders_is_kept_together_and_duplicate_names_renamed() -> None:
    manifest = web01_manifest()
    leaf = f"{CSV2}\\web01\\a\\disk.avhdx"
    middle = f"{CSV2}\\web01\\b\\disk.avhdx"
    base = f"{CSV2}\\web01\\c\\disk.vhdx"
    chain = [disk_file(1, leaf, GiB, parent=middle), disk_file(2, middle, GiB, parent=base),
             disk_file(3, base, GiB)]
    manifest.disks[1].chain = chain
    manifest.vm.drives[1].path = leaf
    manifest.backup.parts = [p for p in manifest.backup.parts if p.file_index in (None, 0)]
    plan = plan_of(manifest)
    assert plan.ok, problem_text(plan)
    folder = f"{CSV2}\\web01\\a"
    assert dests(plan) == {WEB_SYSTEM: WEB_SYSTEM, leaf: f"{folder}\\disk.avhdx", middle: f"{folder}\\disk-2.avhdx",
                           base: f"{folder}\\disk.vhdx"}
    assert reasons(plan) == {WEB_SYSTEM: DiskReason.SAME_PATH_FREE, leaf: DiskReason.SAME_PATH_FREE,
                             middle: DiskReason.RENAMED_DUPLICATE, base: DiskReason.CHAIN_FOLDER}
    assert [d.parent_dest_path for d in plan.disks[1:]] == [f"{folder}\\disk-2.avhdx", f"{folder}\\disk.vhdx", None]
    assert any("restored together" in n for n in plan.notes)


def test_restored_vm_name_is_checked() -> None:
    plan = plan_of(options=RestoreOptions(vm_name="x" * 101))
    assert "restore_vm_name 'xxx" in problem_text(plan) and "longer than 100" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(vm_name="evil\nname"))
    assert "U+000A" in problem_text(plan)


def test_manifest_without_configuration_files_cannot_be_imported() -> None:
    manifest = web01_manifest()
    manifest.backup.parts = [p for p in manifest.backup.parts if p.file_index is not None]
    assert "lists no configuration file" in problem_text(plan_of(manifest))


def test_a_virtual_disk_drive_missing_from_the_disk_list() -> None:
    manifest = web01_manifest()
    del manifest.disks[0]
    assert "drive SCSI 0:0" in problem_text(plan_of(manifest)) and "not in the manifest's list" in problem_text(
        plan_of(manifest))


def test_a_disk_not_backed_up_is_dropped_with_its_reason() -> None:
    manifest = web01_manifest()
    manifest.disks[0].chain = []
    manifest.disks[0].not_backed_up = "excluded by the FileSet"
    manifest.backup.parts = [p for p in manifest.backup.parts if p.file_index != 0]
    plan = plan_of(manifest)
    assert plan.ok, problem_text(plan)
    assert [(d.slot_or_name, d.reason) for d in plan.dropped] == [
        ("SCSI 0:0", "not backed up: excluded by the FileSet")]


def test_iso_in_a_folder_that_could_not_be_listed() -> None:
    dest = dataclasses.replace(same_cluster(files=[]), unlisted={f"{CSV1}\\ISO": "permission denied"})
    plan = plan_of(dest=dest)
    assert plan.ok
    assert "could not be checked" in plan.dropped[0].reason and plan.dropped[0].action is DeviceAction.EMPTIED
    assert any("ISO could not be listed (permission denied)" in n for n in plan.notes)


# --------------------------------------------------------------------------- hostile manifests


def hostile(path: str) -> Any:
    manifest = web01_manifest()
    files = manifest.disks[0].chain
    files[0] = disk_file(0, path, GiB)
    manifest.vm.drives[0].path = path
    return manifest


@pytest.mark.parametrize(("path", "expected"), [
    (f"{CSV1}\\web01\\..\\..\\..\\Windows\\System32\\evil.vhdx", "'..' component"),
    (f"{CSV1}\\web01\\..", "'..' component"),
    (f"{CSV1}\\web01\\disk.vhdx:hidden", "alternate data stream"),
    (f"{CSV1}\\web01\\CON.vhdx", "device name 'CON'"),
    (f"{CSV1}\\web01\\lpt1", "device name 'LPT1'"),
    (f"{CSV1}\\web01\\disk.vhdx.", "ends with a dot or a space"),
    (f"{CSV1}\\web01\\disk\u202excod.vhdx", "U+202E"),
    (f"{CSV1}\\web01\\payload.exe", "does not end with .vhd/.vhdx/.avhd/.avhdx"),
    ("web01\\relative.vhdx", "not an absolute path"),
    ("\\\\?\\C:\\x.vhdx", "device or extended-length path"),
    ("C:" + "\\a" * 20000 + ".vhdx", "longer than 32767"),
])
def test_hostile_disk_paths_are_refused_and_nothing_leaves_the_chosen_folder(path: str, expected: str) -> None:
    for options in (RestoreOptions(), RestoreOptions(storage=CSV2), RestoreOptions(host="HVCLUSTER02")):
        dest = other_cluster() if options.host else same_cluster()
        plan = plan_of(hostile(path), options, dest)
        assert not plan.ok
        assert expected in problem_text(plan)
        assert_all_under_roots(plan)
        for disk in plan.disks:
            assert ".." not in disk.dest_path.split("\\") or any("'..'" in p.message for p in plan.problems)


def test_case_only_and_normalisation_duplicates_are_refused() -> None:
    manifest = web01_manifest()
    manifest.disks[1].chain[1] = disk_file(2, f"{CSV2}\\web01\\WEB01-DATA.vhdx", GiB)
    manifest.disks[1].chain[0] = disk_file(1, WEB_DATA_LEAF, GiB, parent=f"{CSV2}\\web01\\WEB01-DATA.vhdx")
    manifest.disks[0].chain[0] = disk_file(0, f"{CSV1}\\web01\\web01-data.vhdx", GiB)
    assert "differ only by case or Unicode normalisation" in problem_text(plan_of(manifest))
    manifest = web01_manifest()
    manifest.disks[0].chain[0] = disk_file(0, f"{CSV1}\\web01\\caf\u00e9.vhdx", GiB)
    manifest.disks[1].chain[1] = disk_file(2, f"{CSV2}\\web01\\cafe\u0301.vhdx", GiB)
    manifest.disks[1].chain[0] = disk_file(1, WEB_DATA_LEAF, GiB, parent=f"{CSV2}\\web01\\cafe\u0301.vhdx")
    assert "differ only by case or Unicode normalisation" in problem_text(plan_of(manifest))


def test_hostile_configuration_part_names_are_refused() -> None:
    for name, expected in [("config/..%5C..%5Cevil.vmcx", "is not config/<file name>"),
                           ("config/x%5C..%5C..%5Cevil.vmcx", "path separator"),
                           ("config/\\\\server\\share\\x.vmcx", "is not config/<file name>"),
                           ("config/NUL.vmcx", "device name 'NUL'"),
                           ("config/x.vmcx:ads", "alternate data stream"),
                           ("config/run.ps1", "does not end with .vmcx"),
                           ("/etc/passwd", "is not config/<file name>"),
                           ("disks/../../etc/passwd", "is not disks/<n>-<file name>"),
                           ("C:\\Windows\\x", "is not disks/<n>-<file name>")]:
        manifest = web01_manifest()
        index = 0 if name.startswith(("config", "/")) else 2
        part = manifest.backup.parts[index]
        manifest.backup.parts[index] = dataclasses.replace(part, name=name)
        plan = plan_of(manifest)
        assert expected in problem_text(plan), name
        assert_all_under_roots(plan)


def test_hostile_values_are_bounded() -> None:
    manifest = web01_manifest()
    manifest.vm.processors = 100000
    manifest.vm.ref = dataclasses.replace(manifest.vm.ref, guid="../../x")
    manifest.disks[0].chain[0] = dataclasses.replace(manifest.disks[0].chain[0], file_size=2**62, sha256="zz")
    text = problem_text(plan_of(manifest))
    assert "processor count 100000 is outside" in text
    assert "VM ID '../../x' is not a GUID" in text
    assert "size 4611686018427387904 is outside" in text
    assert "SHA-256 'zz' is not 64 hex digits" in text


def test_broken_chains_are_refused() -> None:
    manifest = web01_manifest()
    manifest.disks[1].chain = manifest.disks[1].chain[:1]  # parent missing
    manifest.backup.parts = [p for p in manifest.backup.parts if p.file_index != 2]
    assert "whose parent is not in the backup" in problem_text(plan_of(manifest))
    manifest = web01_manifest()
    manifest.disks[1].chain[0] = disk_file(1, WEB_DATA_LEAF, GiB, parent=f"{CSV1}\\elsewhere.vhdx")
    assert "names the parent" in problem_text(plan_of(manifest))


# --------------------------------------------------------------------------- entry points


def test_candidate_folders_are_the_plans_folders_and_only_clean_ones() -> None:
    folders = candidate_folders(web01_manifest(), RestoreOptions(), same_cluster(files=[]))
    assert folders == (
        CandidateFolder("HV01", WEB_ROOT),
        CandidateFolder("HV01", f"{WEB_ROOT}\\Virtual Machines"),
        CandidateFolder("HV01", f"{CSV1}\\web01\\Virtual Hard Disks"),
        CandidateFolder("HV01", f"{CSV2}\\web01\\Virtual Hard Disks"),
        CandidateFolder("HV01", f"{CSV1}\\ISO"),
    )
    manifest = hostile(f"{CSV1}\\web01\\x\\..\\..\\..\\evil\\disk.vhdx")
    manifest.vm.drives[2].path = "\\\\?\\GLOBALROOT\\x.iso"
    folders = candidate_folders(manifest, RestoreOptions(), same_cluster(files=[]))
    assert all(".." not in f.path and "?" not in f.path for f in folders)
    standalone_folders = candidate_folders(legacy01_manifest(), RestoreOptions(), standalone())
    assert {f.node for f in standalone_folders} == {"HVSTANDALONE01"}


def test_the_same_folders_whatever_files_exist() -> None:
    dest = same_cluster(files=[WEB_SYSTEM, WEB_DATA_BASE])
    plan = plan_of(options=RestoreOptions(new_id=True, vm_name="copy"), dest=dest)
    folders = {safety.path_key(f.path) for f in candidate_folders(web01_manifest(), RestoreOptions(new_id=True,
                                                                                                     vm_name="copy"),
                                                                   dest)}
    assert {safety.path_key(safety.win_dirname(d.dest_path)) for d in plan.disks} <= folders


def test_default_entry_and_helpers() -> None:
    assert default_entry(web01_manifest(), RestoreOptions()) == "HVCLUSTER01"
    assert default_entry(legacy01_manifest(), RestoreOptions()) == "HVSTANDALONE01"
    assert default_entry(web01_manifest(), RestoreOptions(host="HV02")) == "HV02"
    assert windows_versions_running("9.0") == ["Windows Server 2019", "Windows Server 2022", "Windows Server 2025"]
    assert windows_versions_running("99.0") == []
    assert [format_size(n) for n in (0, 1023, 1536, 5 * GiB, 3 * 2**40)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 GiB", "3.0 TiB"]


def test_a_parsed_manifest_plans_like_the_object() -> None:
    manifest = cluster_manifest()
    parsed = from_xml(to_xml(manifest), source="test")
    dest = same_cluster(vms=[], files=[], cluster=cluster_facts(volumes=[(CSV1, 2**40), (CSV2, 2**40)]),
                        hosts=[node("HV01", build=20348)])
    dest.hosts[0].facts.switches.append(dataclasses.replace(dest.hosts[0].facts.switches[0], name="LAN & <Backbone>"))
    options = RestoreOptions(new_id=True)
    assert plan_of(parsed, options, dest) == plan_of(manifest, options, dest)
    plan = plan_of(parsed, options, dest)
    assert plan.ok, problem_text(plan)
    assert plan.name == "web01 / prod \u00e9\u4e2d\U0001f600"
    assert any(g for g in plan.notes if "static MAC" in g)


def test_planning_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, dest = web01_manifest(), other_cluster()

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the planner must not do I/O")

    for target, name in ((builtins, "open"), (socket, "socket"), (time, "time"), (time, "monotonic")):
        monkeypatch.setattr(target, name, forbidden)
    plan = make_plan(manifest, RestoreOptions(host="HVCLUSTER02", missing_switch=MissingSwitch.DISCONNECT), dest,
                     job_id=1)
    candidate_folders(manifest, RestoreOptions(), dest)
    monkeypatch.undo()
    assert plan.ok, problem_text(plan)


def test_problems_are_listed_together() -> None:
    manifest = web01_manifest()
    manifest.vm.version = "10.0"
    options = RestoreOptions(node="HV09", switch_map=[SwitchMapping("External-LAN", "Nope")], overwrite=True,
                             new_id=True, cluster_role=True)
    cluster = cluster_facts(volumes=[(CSV1, GiB), (CSV2, GiB)])
    plan = plan_of(manifest, options, same_cluster(vms=[existing(state=PowerState.RUNNING)], cluster=cluster))
    messages: List[str] = [p.message for p in plan.problems]
    assert len(messages) >= 5
    assert any("contradict" in m for m in messages)
    assert any("restore_node=HV09" in m for m in messages)
    assert any("Nope" in m for m in messages)
    assert any("configuration version 10.0" in m for m in messages)
    assert any("not enough space" in m for m in messages)
    assert len(set(plan.problems)) == len(plan.problems)


def test_a_role_whose_node_is_down_still_holds_the_id() -> None:
    cluster = cluster_facts(nodes=[("HV01", NodeState.UP), ("HV02", NodeState.DOWN)],
                            groups=[VmGroup("web01-old", WEB01, "HV02", 1)])
    dest = same_cluster(cluster=cluster, hosts=[node("HV01")])
    plan = plan_of(dest=dest)
    assert "has the role 'web01-old' for a VM with the ID" in problem_text(plan)
    assert "bring HV02 up" in problem_text(plan)
    plan = plan_of(options=RestoreOptions(new_id=True), dest=dest)
    assert plan.ok and not plan.keep_id


def test_nothing_is_placed_under_an_unusable_option_folder() -> None:
    plan = plan_of(options=RestoreOptions(storage="..\\..\\Windows"))
    assert not plan.ok and plan.config_root == "" and all(d.dest_path == "" for d in plan.disks)
    assert "lists no configuration file" not in problem_text(plan)
    plan = plan_of(options=RestoreOptions(disk_map=[DiskMapping("SCSI 0:0", "C:\\x\\..\\..\\y")]))
    assert dests(plan)[WEB_SYSTEM] == "" and "'..' component" in problem_text(plan)


def test_a_manifest_with_only_a_guest_state_file_cannot_be_imported() -> None:
    manifest = web01_manifest()
    manifest.backup.parts = [p for p in manifest.backup.parts if not p.name.endswith(".vmcx")]
    assert "lists no configuration file (.vmcx/.xml)" in problem_text(plan_of(manifest))
