r"""Builders of the default simulated estate.

``default_world()`` returns a world with:

* cluster ``HVCLUSTER01`` with nodes ``HV01`` and ``HV02`` (Windows Server
  2019), CSVs ``C:\ClusterStorage\Volume1`` and ``Volume2``, switches named
  alike on both nodes (different GUIDs) plus one switch only HV02 has;
* standalone host ``HVSTANDALONE01`` (Windows Server 2022) with VMs on ``D:``;
* VMs: ``web01`` (clustered, Gen 2, running, two VHDX on different CSVs),
  ``db01`` (clustered, Gen 2, off, fixed VHDX), ``file01`` (clustered, Gen 2,
  saved), ``legacy01`` (standalone, Gen 1, running, dynamic VHD + VHDX + fixed VHD
  on IDE, DVD with an ISO, pass-through disk on SCSI).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from hvsim.faults import FaultPlan
from hvsim.world.node import NodeRepository
from hvsim.world.state import DiskSpec, World

CLUSTER = "HVCLUSTER01"
NODES = ("HV01", "HV02")
STANDALONE = "HVSTANDALONE01"
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def default_world(root: Path, *, files: bool = True, faults: FaultPlan | None = None,
                  clock: Callable[[], float] = time.monotonic, job_duration: float = 0.2,
                  time_before_removal: float = 300.0, disk_size: int = 64 * MiB, nodes: int = 2,
                  csvs: int = 2) -> World:
    """The default cluster + standalone host described in the module docstring."""
    w = World(root, faults=faults, clock=clock, files=files, job_duration=job_duration,
              time_before_removal=time_before_removal)
    build_cluster(w, nodes=nodes, csvs=csvs)
    build_standalone(w)
    c = "C:\\ClusterStorage"
    w.add_vm("HV01", "web01", generation=2, version="9.0", state="running", clustered=True,
             root=f"{c}\\Volume1\\web01", switches=["External-LAN"], cpus=4, memory_mb=4096, seed=1,
             disks_=[DiskSpec(f"{c}\\Volume1\\web01\\Virtual Hard Disks\\web01-system.vhdx", size=disk_size),
                     DiskSpec(f"{c}\\Volume{min(2, csvs)}\\web01\\Virtual Hard Disks\\web01-data.vhdx",
                              size=disk_size, fill_ratio=0.1, block_size=MiB)])
    second = NODES[1] if nodes > 1 else NODES[0]
    w.add_vm(second, "db01", generation=2, version="9.0", state="off", clustered=True,
             root=f"{c}\\Volume{min(2, csvs)}\\db01", switches=["External-LAN"], seed=2,
             disks_=[DiskSpec(f"{c}\\Volume{min(2, csvs)}\\db01\\Virtual Hard Disks\\db01.vhdx", kind="fixed",
                              size=16 * MiB, fill_ratio=0.5)])
    w.add_vm(second, "file01", generation=2, version="8.0", state="saved", clustered=True,
             root=f"{c}\\Volume1\\file01", switches=["Internal-Backup"], seed=3,
             disks_=[DiskSpec(f"{c}\\Volume1\\file01\\Virtual Hard Disks\\file01.vhdx", size=disk_size,
                              fill_ratio=0.05)])
    d = "D:\\Hyper-V\\legacy01"
    w.add_vm(STANDALONE, "legacy01", generation=1, version="9.0", state="running", root=d,
             switches=["LAN"], iso="D:\\ISO\\install.iso", passthrough=True, seed=4,
             disks_=[DiskSpec(f"{d}\\Virtual Hard Disks\\legacy01-system.vhd", fmt="vhd", size=disk_size,
                              controller="ide"),
                     DiskSpec(f"{d}\\Virtual Hard Disks\\legacy01-data.vhdx", size=disk_size,
                              controller="ide",
                              fill_ratio=0.1),
                     DiskSpec(f"{d}\\Virtual Hard Disks\\legacy01-swap.vhd", fmt="vhd", kind="fixed",
                              size=8 * MiB, controller="ide", fill_ratio=0.0)])
    return w


REALISTIC_HOST = "HV-PROD-07"
#: Hyper-V's own defaults when New-VM gets no -Path: every VM's configuration in one shared folder,
#: disks in the public documents (Microsoft Learn, "Set-VMHost": VirtualMachinePath, VirtualHardDiskPath).
PROGRAMDATA_HYPERV = "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V"
PUBLIC_VHDS = "C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks"
REALISTIC_SWITCHES = ("External Switch (Intel(R) Ethernet Connection I219-LM)", "Default Switch",
                      "Backup Network \u2013 10 GbE")


def realistic_world(root: Path, *, faults: FaultPlan | None = None, disk_size: int = 4 * MiB) -> World:
    """A standalone host whose VMs are named and placed as real estates have them (issue #9 point 10).

    Names with spaces, brackets, parentheses, a comma, an apostrophe, ``*``, non-ASCII (Latin and
    CJK); configuration in Hyper-V's shared default folder under ``C:\\ProgramData`` or in a folder
    path longer than MAX_PATH (260); a VM with twelve disks; switches whose names hold blanks,
    parentheses and a dash.  ``db[1]`` and ``db1`` both exist so that a name that reads as a
    pattern must be taken as a name.  Hyper-V VM names may hold any character; file names may not
    hold ``*``, so the VM ``nightly build*`` keeps its disk under another name, as New-VHD would.
    ``Sales DB (SMB)`` lives on ``\\\\FS01\\VMStore`` (Hyper-V over SMB, :func:`add_smb_share_vm`).
    """
    w = World(root, faults=faults)
    w.add_node(REALISTIC_HOST, build=20348, switches=list(REALISTIC_SWITCHES), default_vm_path=PROGRAMDATA_HYPERV,
               default_vhd_path=PUBLIC_VHDS)
    lan, default, backup = REALISTIC_SWITCHES
    long_root = (PROGRAMDATA_HYPERV + "\\Virtual Machines Storage\\Department of Finance and Controlling (Paris "
                 "Office)\\Quarterly Reporting and Consolidation Systems\\Production Environment [do not "
                 "touch]\\Reporting Server for the Consolidated Statements")

    def vhd(folder: str, name: str, fmt: str = "vhdx", controller: str = "scsi") -> DiskSpec:
        return DiskSpec(f"{folder}\\{name}", fmt=fmt, size=disk_size, controller=controller, fill_ratio=0.2)

    w.add_vm(REALISTIC_HOST, "Web Server (Production) [EU-West]", state="running", root=PROGRAMDATA_HYPERV,
             switches=[lan, backup], seed=11,
             disks_=[vhd(PUBLIC_VHDS, "Web Server (Production) [EU-West].vhdx")])
    w.add_vm(REALISTIC_HOST, "Müller's Büro-PC \u2013 Ärger", generation=1, state="running", switches=[default],
             seed=12,
             root="D:\\Hyper-V\\Müller's Büro-PC",
             disks_=[vhd("D:\\Hyper-V\\Müller's Büro-PC\\Virtual Hard Disks", "Système (C).vhd", fmt="vhd",
                         controller="ide")])
    w.add_vm(REALISTIC_HOST, "Finance, Paris", state="off", root=PROGRAMDATA_HYPERV, switches=[lan], seed=13,
             disks_=[vhd(PUBLIC_VHDS, "Finance, Paris.vhdx")])
    w.add_vm(REALISTIC_HOST, "db[1]", state="running", root=PROGRAMDATA_HYPERV, switches=[lan], seed=14,
             disks_=[vhd(PUBLIC_VHDS, "db[1].vhdx")])
    w.add_vm(REALISTIC_HOST, "db1", state="running", root=PROGRAMDATA_HYPERV, switches=[lan], seed=15,
             disks_=[vhd(PUBLIC_VHDS, "db1.vhdx")])
    w.add_vm(REALISTIC_HOST, "nightly build*", state="saved", root=PROGRAMDATA_HYPERV, switches=[default], seed=16,
             disks_=[vhd(PUBLIC_VHDS, "nightly build.vhdx")])
    w.add_vm(REALISTIC_HOST, "経理サーバー", state="running", root=PROGRAMDATA_HYPERV, switches=[backup], seed=17,
             disks_=[vhd(PUBLIC_VHDS, "経理サーバー システム.vhdx")])
    w.add_vm(REALISTIC_HOST, "Reporting Server for the Consolidated Statements", state="running", switches=[lan],
             root=long_root, seed=18,
             disks_=[vhd(long_root + "\\Virtual Hard Disks", "Reporting Server for the Consolidated Statements - "
                         "operating system and application binaries.vhdx")])
    archive = "D:\\Archive Storage\\Document Archive"
    w.add_vm(REALISTIC_HOST, "Document Archive", state="running", switches=[backup], root=archive, seed=19,
             disks_=[vhd(archive + "\\Virtual Hard Disks", f"archive-volume-{i:02d}.vhdx") for i in range(12)])
    # Hyper-V over SMB: configuration and disks on a file server's share, named by UNC paths.
    add_smb_share_vm(w, "Sales DB (SMB)", node=REALISTIC_HOST, clustered=False, disk_size=disk_size,
                     switches=[lan], seed=20)
    return w


def add_legacy_vm(w: World, name: str = "old2012", *, node: str = NODES[0], state: str = "running",
                  disk_size: int = 16 * MiB) -> str:
    r"""A scenario variant: a clustered VM kept at configuration version 5.0 (made on 2012 R2).

    Hyper-V 2016/2019 nodes run it as a 2012 R2 VM (:mod:`hvsim.configversion`): XML configuration
    with a ``<GUID>`` folder, no RCT, no reference points.  Generation 1 with a VHDX on SCSI (the
    2012 R2 default layout kept a SCSI controller, which backups need).  Returns the VM's id.
    """
    root = f"C:\\ClusterStorage\\Volume1\\{name}"
    vm = w.add_vm(node, name, generation=1, version="5.0", state=state, clustered=True, root=root,
                  switches=["External-LAN"], seed=50,
                  disks_=[DiskSpec(f"{root}\\Virtual Hard Disks\\{name}.vhdx", size=disk_size, fill_ratio=0.2)])
    return vm.id


FILE_SERVER = "FS01"
VM_SHARE = "VMStore"


def add_smb_share_vm(w: World, name: str = "sql01", *, node: str = NODES[0], clustered: bool = True,
                     state: str = "running", server: str = FILE_SERVER, share: str = VM_SHARE,
                     access: str = "full", disk_size: int = 16 * MiB, config_on_share: bool = True,
                     switches: list[str] | None = None, seed: int = 60) -> str:
    r"""A scenario variant: a VM stored on an SMB 3 file share (Hyper-V over SMB).

    The share ``\\<server>\<share>`` of a simulated file server (:mod:`hvsim.fs`) holds the VM's
    folder ``\\FS01\VMStore\<name>`` with its configuration (unless ``config_on_share=False``: then
    under the node's default folder) and two VHDX in ``Virtual Hard Disks``; Hyper-V reports every
    path as UNC (HostResource, ConfigurationDataRoot), and checkpoints put their ``.avhdx`` next to
    the parent on the share.  ``access`` is the backup account's access to the share (``full``/``read``).
    Returns the VM's id.
    """
    w.fs.add_file_share(server, share, access=access)
    folder = f"\\\\{server}\\{share}\\{name}"
    n = w.node(node)
    root = folder if config_on_share else f"{n.default_vm_path}\\{name}"
    vhds = f"{folder}\\Virtual Hard Disks"
    sw = switches if switches is not None else [s.name for s in n.switches[:1]]
    vm = w.add_vm(n.name, name, generation=2, version="9.0", state=state, clustered=clustered, root=root,
                  switches=sw, seed=seed,
                  disks_=[DiskSpec(f"{vhds}\\{name}-system.vhdx", size=disk_size, fill_ratio=0.2),
                          DiskSpec(f"{vhds}\\{name}-data.vhdx", size=disk_size, fill_ratio=0.1, block_size=MiB)])
    return vm.id


def build_cluster(w: World, *, name: str = CLUSTER, nodes: int = 2, csvs: int = 2) -> None:
    """Cluster, its nodes (HV01, HV02, HV03...) and CSVs."""
    w.add_cluster(name)
    for i in range(nodes):
        node = f"HV{i + 1:02d}"
        switches = ["External-LAN", "Internal-Backup"] + (["Lab-Isolated"] if i == 1 else [])
        w.add_node(node, build=17763, switches=switches, cluster=True,
                   default_vm_path="C:\\ClusterStorage\\Volume1" if i == 0 else None,
                   default_vhd_path="C:\\ClusterStorage\\Volume1\\Virtual Hard Disks" if i == 0 else None)
    sizes = [(2 * TiB, 1200 * GiB), (1 * TiB, 800 * GiB), (512 * GiB, 100 * GiB)]
    for i in range(csvs):
        total, free = sizes[i % len(sizes)]
        w.add_csv(total, free)


def build_standalone(w: World, name: str = STANDALONE) -> None:
    """A standalone Windows Server 2022 host with local storage on D:."""
    w.add_node(name, build=20348, switches=["LAN"], default_vm_path="D:\\Hyper-V",
               default_vhd_path="D:\\Hyper-V\\Virtual Hard Disks")


def repositories(w: World) -> dict[str, NodeRepository]:
    """One NodeRepository per node, by node name."""
    return {name: NodeRepository(w, name) for name in w.nodes}
