r"""Where the simulated nodes' Windows paths live on the test machine.

Layout under the simulation root::

    <root>/nodes/<NODE>/<drive letter>/...      a node's local volumes (C:, D:, ...)
    <root>/csv/Volume<N>/...                    cluster shared volumes
    <root>/nodes/<NODE>/C/ClusterStorage -> ../../../csv   (symlink: same CSV tree on every node)

``C:\ClusterStorage\Volume1\vm\disk.vhdx`` on node ``HV01`` is therefore
``<root>/nodes/HV01/C/ClusterStorage/Volume1/vm/disk.vhdx``, which is
``<root>/csv/Volume1/vm/disk.vhdx`` whichever node asks.  Samba serves
``<root>/nodes/<NODE>/C`` as that node's ``C$`` share (following the symlink).

File servers for Hyper-V over SMB (a Scale-Out File Server or any SMB 3 server)::

    <root>/fileservers/<SERVER>/<share>/...     one directory per share

``\\FS01\VMStore\sql01\disk.vhdx`` is ``<root>/fileservers/FS01/VMStore/sql01/disk.vhdx`` on every
node: Hyper-V keeps a VM's configuration, disks and checkpoint files (``.avhdx`` next to the parent)
on the share and names them by their UNC paths (Microsoft, "Deploy Hyper-V over SMB",
https://learn.microsoft.com/previous-versions/windows/it-pro/windows-server-2012-r2-and-2012/jj134187(v=ws.11);
"Hyper-V virtual machine supported file locations", KB 2928127: ``\\FILESERVER\Share\VMname`` is a
supported location, the share's root is not).  The hosts reach the share with their computer
accounts, which the share grants Full Control (``Grant-SmbShareAccess ... -AccountName
Contoso\Contoso-HV1$ -AccessRight Full`` in Microsoft's SmbShare documentation); the simulation's
own smbd for the server (:class:`hvsim.samba.SambaCluster`) is what the backup account meets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath

_DRIVE = re.compile(r"^([A-Za-z]):\\")
#: Access the simulated backup account has on a file share: "full" (read and write) or "read".
SHARE_ACCESS = ("full", "read")


def split_unc(host_path: str) -> tuple[str, str, list[str]]:
    r"""``\\server\share\a\b`` -> ``("server", "share", ["a", "b"])``; ValueError for anything else.

    Device paths (``\\?\``, ``\\.\``), empty components and ``.``/``..`` are refused, as for drive paths.
    """
    if not host_path.startswith("\\\\"):
        raise ValueError(f"not a UNC path: {host_path!r}")
    parts = host_path[2:].split("\\")
    if len(parts) < 2 or not parts[0] or not parts[1] or parts[0] in ("?", "."):
        raise ValueError(f"not a \\\\server\\share path: {host_path!r}")
    rest = parts[2:]
    if rest and rest[-1] == "":
        rest = rest[:-1]  # a trailing backslash names the folder itself
    for p in rest:
        if p in ("", ".", ".."):
            raise ValueError(f"path escapes its share: {host_path!r}")
    return parts[0], parts[1], rest


class FileShares:
    r"""The shares of the simulated file servers (``\\SERVER\share``), by server and share name.

    Names compare as Windows compares them (case-insensitively); a server is known by the name it
    was added with (its NetBIOS name, as Hyper-V over SMB paths use it).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._shares: dict[tuple[str, str], tuple[str, Path, str]] = {}  # (SERVER, share lower) -> (name, dir, access)

    def add(self, server: str, share: str, *, access: str = "full") -> Path:
        r"""Create ``\\server\share`` (idempotent) and return its directory."""
        if access not in SHARE_ACCESS:
            raise ValueError(f"share access must be one of {SHARE_ACCESS}, not {access!r}")
        if not server or not share or any(c in server + share for c in "\\/:"):
            raise ValueError(f"not a server and share name: {server!r} {share!r}")
        key = (server.upper(), share.lower())
        if key not in self._shares:
            d = self.root / "fileservers" / server.upper() / share
            d.mkdir(parents=True, exist_ok=True)
            self._shares[key] = (share, d, access)
        else:
            name, d, _old = self._shares[key]
            self._shares[key] = (name, d, access)
        return self._shares[key][1]

    def servers(self) -> dict[str, dict[str, Path]]:
        """Server name -> {share name -> directory}."""
        out: dict[str, dict[str, Path]] = {}
        for (server, _low), (name, d, _access) in self._shares.items():
            out.setdefault(server, {})[name] = d
        return out

    def read_only(self) -> dict[str, list[str]]:
        """Server name -> names of its shares the backup account may only read."""
        out: dict[str, list[str]] = {}
        for (server, _low), (name, _d, access) in self._shares.items():
            if access == "read":
                out.setdefault(server, []).append(name)
        return out

    def local(self, host_path: str) -> Path:
        r"""Local path for ``\\server\share\...`` (ValueError: not UNC, unknown server or share)."""
        server, share, rest = split_unc(host_path)
        hit = self._shares.get((server.upper(), share.lower()))
        if hit is None:
            raise ValueError(f"no simulated file share \\\\{server}\\{share} (the network path was not found): "
                             f"{host_path!r}")
        return hit[1].joinpath(*rest)


class NodeFileSystem:
    r"""Maps one node's host paths (``C:\...``) to local directories."""

    def __init__(self, root: Path, node: str, csv_root: Path, *, clustered: bool = True,
                 file_shares: FileShares | None = None) -> None:
        self.root = root
        # The file servers' shares are the same for every node (one object, shared by reference).
        self.file_shares = file_shares if file_shares is not None else FileShares(root)
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
        r"""Local path for ``C:\VMs\a.vhdx`` or ``\\FS01\VMStore\a.vhdx``; ValueError for relative paths.

        A UNC path names a share of a simulated file server (the same file whichever node asks);
        an unknown server or share is a ValueError, as Windows answers "network path not found".
        """
        if host_path.startswith("\\\\"):
            return self.file_shares.local(host_path)
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
        self.file_shares = FileShares(root)

    def node(self, name: str, *, clustered: bool = True) -> NodeFileSystem:
        """The filesystem of one node (created on first use; ``clustered`` decides whether CSVs appear)."""
        key = name.upper()
        if key not in self._nodes:
            self._nodes[key] = NodeFileSystem(self.root, key, self.csv_root, clustered=clustered,
                                              file_shares=self.file_shares)
        return self._nodes[key]

    def csv_volume(self, number: int) -> Path:
        """Local directory of ``C:\\ClusterStorage\\Volume<number>``."""
        d = self.csv_root / f"Volume{number}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def share_dir(self, node: str, drive: str = "C") -> Path:
        """Directory Samba serves as ``\\\\node\\<drive>$``."""
        return self.node(node).drive_dir(drive)

    def add_file_share(self, server: str, share: str, *, access: str = "full") -> Path:
        r"""Create ``\\server\share`` on a simulated file server; returns its directory.

        ``access`` is what the backup account may do there (``full`` or ``read``); the hosts'
        computer accounts always have Full Control, as Hyper-V over SMB requires.
        """
        return self.file_shares.add(server, share, access=access)
