"""Fully populated manifests for the manifest tests: a clustered gen2 VM and a standalone gen1 VM.

Captured settings are real CIM-XML: the recorded Hyper-V fixtures in
``tests/fixtures/shared/cim-xml`` and instances written by ``wsman.cim.to_cimxml``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from bareos_hyperv.manifest import Manifest, VmSettings
from bareos_hyperv.model.backup import (
    BackupFacts,
    BackupLevel,
    CapturedSettings,
    Consistency,
    ConsistencyMode,
    Controller,
    DiskBackup,
    DiskFile,
    PartKind,
    RctEntry,
    ReferencePoint,
    SaveSetPart,
)
from bareos_hyperv.model.cluster import ClusterFacts, ClusterNode, NodeState, SharedVolume, VmGroup
from bareos_hyperv.model.disk import DiskFormat, DiskType, VirtualDiskInfo
from bareos_hyperv.model.host import HostFacts, Switch
from bareos_hyperv.model.vm import (
    ControllerKind,
    Drive,
    DriveKind,
    DriveSlot,
    Generation,
    NetworkAdapter,
    PowerState,
    VmConfig,
    VmRef,
)
from bareos_hyperv.wsman.cim import CimInstance, EndpointReference, to_cimxml

CIMXML_DIR = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "shared" / "cim-xml"
CIMXML_FILES = sorted(CIMXML_DIR.glob("*.xml"))

CLUSTER_VM = "5B2C8E61-0F3A-4C5D-9E7B-1A2B3C4D5E6F"
STANDALONE_VM = "D99A57FE-9F2F-44EE-B15F-BF6C5D740D1C"
V2 = "root/virtualization/v2"


def sha(seed: str) -> str:
    """A well-formed SHA-256 hex digest, distinct per seed."""
    import hashlib

    return hashlib.sha256(seed.encode()).hexdigest()


def vssd_cimxml(guid: str, name: str, generation: int, notes: str) -> str:
    """The VM's system settings as to_cimxml writes them."""
    vssd = CimInstance(
        "Msvm_VirtualSystemSettingData",
        [
            ("InstanceID", f"Microsoft:{guid}"),
            ("VirtualSystemIdentifier", guid),
            ("ElementName", name),
            ("VirtualSystemSubType", f"Microsoft:Hyper-V:SubType:{generation}"),
            ("Version", "10.0"),
            ("Notes", [notes]),
            ("SecureBootEnabled", generation == 2),
            ("BIOSGUID", "{4C4C4544-0042-3010-8053-B4C04F4E3232}"),
            ("CreationTime", datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)),
            ("AutomaticStartupAction", 3),
        ],
        types={"AutomaticStartupAction": "uint16", "Notes": "string[]"},
    )
    return to_cimxml(vssd)


def epasd_cimxml(guid: str, switch_guid: str) -> str:
    """A switch connection (EPASD) with a REF-valued property, as to_cimxml writes it."""
    switch = EndpointReference.build(
        V2, "Msvm_VirtualEthernetSwitch", {"CreationClassName": "Msvm_VirtualEthernetSwitch", "Name": switch_guid}
    )
    epasd = CimInstance(
        "Msvm_EthernetPortAllocationSettingData",
        [
            ("InstanceID", f"Microsoft:{guid}\\C3F2A1B0-1111-2222-3333-444455556666\\C"),
            ("ResourceType", 33),
            ("Parent", switch),
            ("HostResource", [f'\\\\HV01\\root\\virtualization\\v2:Msvm_VirtualEthernetSwitch.Name="{switch_guid}"']),
            ("EnabledState", 2),
            ("LastKnownSwitchName", "LAN & <Backbone>"),
        ],
        types={"ResourceType": "uint16", "EnabledState": "uint16", "HostResource": "string[]"},
    )
    return to_cimxml(epasd)


def fixture_settings() -> List[CapturedSettings]:
    """Every recorded CIM-XML fixture, verbatim, as a captured resource setting."""
    captured = []
    for path in CIMXML_FILES:
        text = path.read_bytes().decode("utf-8")
        class_name = path.name.split("-")[2]
        captured.append(CapturedSettings(class_name=class_name, instance_id=f"fixture:{path.name}", cimxml=text))
    return captured


def cluster_manifest() -> Manifest:
    """A clustered gen2 VM with two SCSI disks (one on a differencing chain), incremental backup."""
    guid = CLUSTER_VM
    disk_a = f"Microsoft:{guid}\\SCSI-0-0\\D"
    disk_b = f"Microsoft:{guid}\\SCSI-0-1\\D"
    dvd = f"Microsoft:{guid}\\SCSI-0-2\\D"
    csv1 = "C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks"
    csv2 = "C:\\ClusterStorage\\Volume2\\web01"
    vm = VmConfig(
        ref=VmRef(guid=guid, name="web01 / prod \u00e9\u4e2d\U0001f600"),
        generation=Generation.GEN2,
        version="10.0",
        state=PowerState.RUNNING,
        processors=4,
        memory_mb=8192,
        dynamic_memory=True,
        config_root="C:\\ClusterStorage\\Volume1\\web01",
        snapshot_root="C:\\ClusterStorage\\Volume1\\web01\\Snapshots",
        drives=[
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.SCSI, 0, 0), f"{csv1}\\web01.vhdx", disk_a),
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.SCSI, 0, 1), f"{csv2}\\data_AB12.avhdx", disk_b),
            Drive(DriveKind.DVD, DriveSlot(ControllerKind.SCSI, 0, 2), None, dvd),
        ],
        adapters=[
            NetworkAdapter(
                name="Network Adapter",
                mac="00155D0107DC",
                static_mac=True,
                legacy=False,
                switch_name="LAN & <Backbone>",
                switch_id="A1B2C3D4-0000-1111-2222-333344445555",
                connected=True,
                settings_id=f"Microsoft:{guid}\\C3F2A1B0-1111-2222-3333-444455556666",
            ),
            NetworkAdapter(
                name="Replication",
                mac="000000000000",
                static_mac=False,
                legacy=False,
                switch_name=None,
                switch_id=None,
                connected=False,
                settings_id=f"Microsoft:{guid}\\99999999-1111-2222-3333-444455556666",
            ),
        ],
        secure_boot=True,
        notes="line one\r\nline two with ]]> and <tags> & \"quotes\"\n\ttabbed",
    )
    chain_b = [
        DiskFile(
            index=1,
            info=VirtualDiskInfo(
                path=f"{csv2}\\data_AB12.avhdx",
                format=DiskFormat.VHDX,
                type=DiskType.DIFFERENCING,
                virtual_size=200 * 2**30,
                block_size=2 * 2**20,
                logical_sector_size=512,
                physical_sector_size=4096,
                parent_path=f"{csv2}\\data.vhdx",
                disk_id="8E1B6C2A-3D4F-4A5B-9C8D-7E6F5A4B3C2D",
            ),
            file_size=4 * 2**20,
            sha256=sha("b-leaf"),
        ),
        DiskFile(
            index=2,
            info=VirtualDiskInfo(
                path=f"{csv2}\\data.vhdx",
                format=DiskFormat.VHDX,
                type=DiskType.DYNAMIC,
                virtual_size=200 * 2**30,
                block_size=32 * 2**20,
                logical_sector_size=512,
                physical_sector_size=4096,
            ),
            file_size=17 * 2**30 + 4096,
            sha256=sha("b-base"),
        ),
    ]
    disks = [
        DiskBackup(
            settings_id=disk_a,
            chain=[
                DiskFile(
                    index=0,
                    info=VirtualDiskInfo(
                        path=f"{csv1}\\web01.vhdx",
                        format=DiskFormat.VHDX,
                        type=DiskType.DYNAMIC,
                        virtual_size=127 * 2**30,
                        block_size=32 * 2**20,
                        logical_sector_size=512,
                        physical_sector_size=4096,
                        disk_id="0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
                    ),
                    file_size=9 * 2**30,
                    sha256=sha("a"),
                )
            ],
        ),
        DiskBackup(settings_id=disk_b, chain=chain_b),
    ]
    backup = BackupFacts(
        level=BackupLevel.INCREMENTAL,
        job_id=4711,
        time=datetime(2025, 1, 31, 22, 5, 0, 123456, tzinfo=timezone.utc),
        consistency_requested=ConsistencyMode.APPLICATION,
        consistency_achieved=Consistency.APPLICATION,
        plugin_version="0.1.0",
        checkpoint_id="Microsoft:7A9B8C6D-1E2F-4A3B-8C9D-0E1F2A3B4C5D",
        reference_point=ReferencePoint(
            instance_id="Microsoft:RP-4711",
            rct=(RctEntry(disk_a, "rctX:a:11"), RctEntry(disk_b, "rctX:b:22")),
            job_id=4711,
        ),
        previous_reference_point=ReferencePoint(
            instance_id="Microsoft:RP-4700", rct=(RctEntry(disk_a, "rctX:a:10"), RctEntry(disk_b, "rctX:b:21")),
            job_id=4700,
        ),
        parts=[
            SaveSetPart(PartKind.CONFIG, f"config/{guid}.vmcx", 81920, sha("vmcx"), source=f"C:\\x\\{guid}.vmcx"),
            SaveSetPart(PartKind.CONFIG, f"config/{guid}.vmgs", 1 << 20, sha("vmgs")),
            SaveSetPart(PartKind.DELTA, "disks/0-web01.vhdx+I+4711", 6 << 20, sha("d0"), 0, csv1, 4700),
            SaveSetPart(PartKind.DELTA, "disks/1-data_AB12.avhdx+I+4711", 0, sha("d1"), 1, None, 4700),
            SaveSetPart(PartKind.DISK, "disks/2-data.vhdx", 17 * 2**30 + 4096, sha("b-base"), 2),
        ],
        warnings=["disk 2 has no RCT: full copy", "warning with \r\n CRLF"],
    )
    host = HostFacts(
        name="HV01",
        os_version="10.0.20348",
        supported_config_versions=["8.0", "9.0", "9.1", "10.0"],
        default_vhd_path="C:\\ClusterStorage\\Volume1\\Hyper-V\\Virtual Hard Disks",
        default_vm_path="C:\\ClusterStorage\\Volume1\\Hyper-V",
        switches=[Switch("LAN & <Backbone>", "A1B2C3D4-0000-1111-2222-333344445555"), Switch("Storage", "S-2")],
    )
    cluster = ClusterFacts(
        name="HVCLUSTER01",
        fqdn="hvcluster01.example.test",
        shared_volumes_root="C:\\ClusterStorage",
        nodes=[ClusterNode("HV01", NodeState.UP), ClusterNode("HV02", NodeState.PAUSED),
               ClusterNode("HV03", NodeState.UNKNOWN)],
        volumes=[
            SharedVolume("Cluster Disk 1", "C:\\ClusterStorage\\Volume1", 2 * 2**40, 2**40, "HV01"),
            SharedVolume("Cluster Disk 2", "C:\\ClusterStorage\\Volume2", 2**40, 3 * 2**30, None),
        ],
        groups=[
            VmGroup(
                name="web01",
                vm_guid=guid,
                owner_node="HV01",
                state=0,
                preferred_owners=("HV01", "HV02"),
                resources=("Virtual Machine web01", "Virtual Machine Configuration web01"),
            )
        ],
    )
    settings = VmSettings(
        system=CapturedSettings(
            "Msvm_VirtualSystemSettingData", f"Microsoft:{guid}", vssd_cimxml(guid, vm.ref.name, 2, vm.notes)
        ),
        resources=[
            CapturedSettings(
                "Msvm_EthernetPortAllocationSettingData",
                f"Microsoft:{guid}\\C3F2A1B0-1111-2222-3333-444455556666\\C",
                epasd_cimxml(guid, "A1B2C3D4-0000-1111-2222-333344445555"),
            ),
            *fixture_settings(),
        ],
    )
    return Manifest(
        backup=backup,
        vm=vm,
        host=host,
        settings=settings,
        controllers=[Controller(ControllerKind.SCSI, 0, f"Microsoft:{guid}\\SCSI-0")],
        disks=disks,
        cluster=cluster,
    )


def standalone_manifest() -> Manifest:
    """A standalone gen1 VM: IDE VHD, SCSI VHDX, DVD with an ISO, a pass-through disk; full, crash-consistent."""
    guid = STANDALONE_VM
    ide_vhd = f"Microsoft:{guid}\\IDE-0-0\\D"
    scsi_vhdx = f"Microsoft:{guid}\\SCSI-0-0\\D"
    dvd = f"Microsoft:{guid}\\IDE-1-0\\D"
    passthrough = f"Microsoft:{guid}\\SCSI-0-1\\D"
    folder = "C:\\Hyper-V\\Virtual Hard Disks"
    vm = VmConfig(
        ref=VmRef(guid=guid, name="legacy"),
        generation=Generation.GEN1,
        version="5.0",
        state=PowerState.OFF,
        processors=1,
        memory_mb=512,
        dynamic_memory=False,
        config_root="C:\\Hyper-V",
        snapshot_root="",
        drives=[
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.IDE, 0, 0), f"{folder}\\boot.vhd", ide_vhd),
            Drive(DriveKind.DVD, DriveSlot(ControllerKind.IDE, 1, 0), "D:\\iso\\setup.iso", dvd),
            Drive(DriveKind.VIRTUAL_DISK, DriveSlot(ControllerKind.SCSI, 0, 0), f"{folder}\\data.vhdx", scsi_vhdx),
            Drive(
                DriveKind.PASS_THROUGH,
                DriveSlot(ControllerKind.SCSI, 0, 1),
                None,
                passthrough,
                host_resource='\\\\HV12\\root\\virtualization\\v2:Msvm_DiskDrive.DeviceID="Microsoft:X\\\\3"',
            ),
        ],
        adapters=[
            NetworkAdapter("Legacy Network Adapter", "00155D01AB02", False, True, "External", "E-1", True, "nic-1")
        ],
        secure_boot=None,
        notes="",
    )
    disks = [
        DiskBackup(
            ide_vhd,
            [
                DiskFile(
                    0,
                    VirtualDiskInfo(f"{folder}\\boot.vhd", DiskFormat.VHD, DiskType.FIXED, 10 * 2**20, 0, 512, 512),
                    10 * 2**20 + 512,
                    sha("vhd"),
                )
            ],
        ),
        DiskBackup(
            scsi_vhdx,
            [
                DiskFile(
                    1,
                    VirtualDiskInfo(f"{folder}\\data.vhdx", DiskFormat.VHDX, DiskType.DYNAMIC, 2**30, 2**25, 512, 4096),
                    4 * 2**20,
                    None,
                )
            ],
        ),
        DiskBackup(passthrough, [], "pass-through disk: Hyper-V checkpoints do not include it"),
    ]
    backup = BackupFacts(
        level=BackupLevel.FULL,
        job_id=1,
        time=datetime(2025, 2, 1, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        consistency_requested=ConsistencyMode.APPLICATION,
        consistency_achieved=Consistency.CRASH,
        plugin_version="0.1.0",
        parts=[
            SaveSetPart(PartKind.CONFIG, f"config/{guid}.xml", 19331, sha("xml")),
            SaveSetPart(PartKind.DISK, "disks/0-boot.vhd", 10 * 2**20 + 512, sha("vhd"), 0, f"{folder}\\boot.vhd"),
            SaveSetPart(PartKind.DISK, "disks/1-data.vhdx", 4 * 2**20, sha("vhdx"), 1, f"{folder}\\data.vhdx"),
        ],
        warnings=["application consistency not possible: the VM is off; crash-consistent backup taken"],
    )
    host = HostFacts(name="HVSTANDALONE01", os_version="6.3.9600", supported_config_versions=["5.0"])
    settings = VmSettings(
        system=CapturedSettings(
            "Msvm_VirtualSystemSettingData", f"Microsoft:{guid}", vssd_cimxml(guid, "legacy", 1, "")
        ),
        resources=fixture_settings(),
    )
    return Manifest(
        backup=backup,
        vm=vm,
        host=host,
        settings=settings,
        controllers=[
            Controller(ControllerKind.IDE, 0, f"Microsoft:{guid}\\IDE-0"),
            Controller(ControllerKind.IDE, 1, f"Microsoft:{guid}\\IDE-1"),
            Controller(ControllerKind.SCSI, 0, f"Microsoft:{guid}\\SCSI-0"),
        ],
        disks=disks,
    )


BUILDERS: Dict[str, Callable[[], Manifest]] = {"cluster": cluster_manifest, "standalone": standalone_manifest}


@pytest.fixture
def make() -> Callable[[str], Manifest]:
    """Builds a fresh manifest by kind ("cluster" or "standalone"), for tests that need several."""
    return lambda kind: BUILDERS[kind]()


@pytest.fixture(params=sorted(BUILDERS))
def any_manifest(request: pytest.FixtureRequest) -> Manifest:
    """Each of the two fully populated manifests."""
    return BUILDERS[request.param]()


@pytest.fixture
def cluster() -> Manifest:
    """The clustered VM's manifest."""
    return cluster_manifest()


@pytest.fixture
def standalone() -> Manifest:
    """The standalone gen1 VM's manifest."""
    return standalone_manifest()
