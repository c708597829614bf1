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
