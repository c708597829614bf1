"""What an administrator asked of a restore into Hyper-V: the typed ``restore_*`` options.

Standard library only.  The fd parses the plugin definition once
(:mod:`bareos_hyperv.fd.options`) and sends this object over the socket; the agent and the
planner never parse option strings again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


class RestoreTarget(enum.Enum):
    """Where the restored items go."""

    HYPERV = "hyperv"  # import the VM into Hyper-V (where= empty or /)
    DIRECTORY = "directory"  # files below the restore job's where= directory, no Hyper-V involved


class MissingSwitch(enum.Enum):
    """What to do with a network adapter whose switch the destination lacks."""

    FAIL = "fail"
    DISCONNECT = "disconnect"


@dataclass(frozen=True)
class DiskMapping:
    r"""One ``restore_disk_map`` entry: a disk (by source file name, source path or drive slot) -> folder.

    ``source`` is matched, case-insensitively, against the disk file's full source path, its
    file name, or the drive slot as rendered in the plan (``SCSI 0:1``); ``folder`` is a host
    path (``C:\ClusterStorage\Volume2\web01``) or a file path ending in ``.vhdx``/``.vhd``/``.avhdx``.
    """

    source: str
    folder: str


@dataclass(frozen=True)
class SwitchMapping:
    """One ``restore_switch_map`` entry: the switch name at backup -> the switch name at the destination."""

    source: str
    target: str


@dataclass(frozen=True)
class RestoreOptions:
    """The restore-only options, typed and checked (``restore_*`` plugin options).

    ``host``: node, standalone host or cluster name (None: where the VM was).  ``vm_name``:
    the restored VM's name (None: keep).  ``new_id``: None means "keep the ID when nobody at the
    destination has it, refuse otherwise".  ``storage``: one folder or CSV for configuration and
    disks.  ``cluster_role``: None means yes when the destination is a cluster.  ``vms``: names
    or GUIDs of the VMs of a multi-VM job to restore (empty: all selected).
    """

    target: RestoreTarget = RestoreTarget.HYPERV
    host: Optional[str] = None
    vm_name: Optional[str] = None
    new_id: Optional[bool] = None
    overwrite: bool = False
    force_off: bool = False
    storage: Optional[str] = None
    disk_map: List[DiskMapping] = field(default_factory=list)
    switch_map: List[SwitchMapping] = field(default_factory=list)
    missing_switch: MissingSwitch = MissingSwitch.FAIL
    dry_run: bool = False
    start: bool = False
    cluster_role: Optional[bool] = None
    node: Optional[str] = None
    vms: List[str] = field(default_factory=list)

    def mapped_switch(self, name: Optional[str]) -> Optional[str]:
        """The destination switch name ``restore_switch_map`` gives for ``name`` (None: not mapped)."""
        if name is None:
            return None
        low = name.casefold()
        return next((m.target for m in self.switch_map if m.source.casefold() == low), None)


def parse_pairs(value: str, option: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Split ``a=b,c=d`` into pairs; returns (pairs, problems naming ``option``)."""
    pairs: List[Tuple[str, str]] = []
    problems: List[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            problems.append(f"{option}: '{item}' is not old=new")
            continue
        pairs.append((left.strip(), right.strip()))
    return pairs, problems
