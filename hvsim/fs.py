r"""Where the simulated nodes' Windows paths live on the test machine.

Layout under the simulation root::

    <root>/nodes/<NODE>/<drive letter>/...      a node's local volumes (C:, D:, ...)
    <root>/csv/Volume<N>/...                    cluster shared volumes
    <root>/nodes/<NODE>/C/ClusterStorage -> ../../../csv   (symlink: same CSV tree on every node)

``C:\ClusterStorage\Volume1\vm\disk.vhdx`` on node ``HV01`` is therefore
``<root>/nodes/HV01/C/ClusterStorage/Volume1/vm/disk.vhdx``, which is
``<root>/csv/Volume1/vm/disk.vhdx`` whichever node asks.  Samba serves
``<root>/nodes/<NODE>/C`` as that node's ``C$`` share (following the symlink).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath

_DRIVE = re.compile(r"^([A-Za-z]):\\")


class NodeFileSystem:
    r"""Maps one node's host paths (``C:\...``) to local directories."""

    def __init__(self, root: Path, node: str, csv_root: Path, *, clustered: bool = True) -> None:
        self.root = root
        self.node = node
        self.base = root / "nodes" / node
        self.csv_root = csv_root
        c_drive = self.base / "C"
        c_drive.mkdir(parents=True, exist_ok=True)
        link = c_drive / "ClusterStorage"
        # Only cluster nodes see the shared volumes; a standalone host has no C:\ClusterStorage.
        if clustered and not link.exists() and not link.is_symlink():
            link.symlink_to(os.path.relpath(csv_root, c_drive), target_is_directory=True)

    def drive_dir(self, letter: str) -> Path:
        """Local directory backing a drive letter (created on demand)."""
        d = self.base / letter.upper()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def local(self, host_path: str) -> Path:
        r"""Local path for a host path such as ``C:\VMs\a.vhdx``; ValueError for UNC/relative paths."""
        m = _DRIVE.match(host_path)
        if not m:
            raise ValueError(f"not an absolute drive path: {host_path!r}")
        parts = PureWindowsPath(host_path).parts[1:]
        for p in parts:
            if p in ("..", "."):
                raise ValueError(f"path escapes its drive: {host_path!r}")
        return self.drive_dir(m.group(1)).joinpath(*parts)

    def exists(self, host_path: str) -> bool:
        """Whether the host path names an existing file or directory."""
        try:
            return self.local(host_path).exists()
        except ValueError:
            return False


class ClusterFileSystem:
    """The filesystems of every node of one simulation, plus the shared CSV tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.csv_root = root / "csv"
        self.csv_root.mkdir(parents=True, exist_ok=True)
        self._nodes: dict[str, NodeFileSystem] = {}

    def node(self, name: str, *, clustered: bool = True) -> NodeFileSystem:
        """The filesystem of one node (created on first use; ``clustered`` decides whether CSVs appear)."""
        key = name.upper()
        if key not in self._nodes:
            self._nodes[key] = NodeFileSystem(self.root, key, self.csv_root, clustered=clustered)
        return self._nodes[key]

    def csv_volume(self, number: int) -> Path:
        """Local directory of ``C:\\ClusterStorage\\Volume<number>``."""
        d = self.csv_root / f"Volume{number}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def share_dir(self, node: str, drive: str = "C") -> Path:
        """Directory Samba serves as ``\\\\node\\<drive>$``."""
        return self.node(node).drive_dir(drive)
