"""Real VHD/VHDX files for the simulated VMs (API contract; implementation in progress).

The Hyper-V world (``hvsim.world``) creates and manipulates every virtual disk
through these functions only, so that the files on disk are real VHD/VHDX
images that ``qemu-img check`` accepts and that the product's reader must parse.

All sizes are bytes.  ``fmt`` is ``"vhd"`` or ``"vhdx"``; ``kind`` is
``"fixed"``, ``"dynamic"`` or ``"differencing"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class DiskInfo:
    """What ``Msvm_VirtualHardDiskSettingData`` / ``Msvm_VirtualHardDiskState`` report for a file."""

    path: Path
    fmt: str  # "vhd" | "vhdx"
    kind: str  # "fixed" | "dynamic" | "differencing"
    virtual_size: int  # MaxInternalSize
    block_size: int  # 0 for fixed VHD
    logical_sector_size: int
    physical_sector_size: int
    file_size: int
    virtual_disk_id: str  # GUID string, upper case, no braces
    parent_path: Optional[str] = None  # host path of the parent as recorded in the child's locator
    data_write_guid: Optional[str] = None  # VHDX only


@dataclass
class ChangeTracker:
    """Virtual byte ranges written since a point (resilient change tracking state of one disk)."""

    ranges: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), merged, sorted


def create_disk(path: Path, fmt: str, kind: str, virtual_size: int, *, block_size: int = 0,
                logical_sector_size: int = 512, physical_sector_size: int = 4096,
                fill_ratio: float = 0.0, seed: int = 0) -> DiskInfo:
    """Create a fixed or dynamic disk; ``fill_ratio`` of its blocks get deterministic pseudo-random data."""
    raise NotImplementedError


def create_differencing(path: Path, parent: Path, parent_host_path: str) -> DiskInfo:
    """Create a differencing child (``.avhdx``/``.avhd``) of ``parent`` recording ``parent_host_path``."""
    raise NotImplementedError


def disk_info(path: Path) -> DiskInfo:
    """Read a disk's headers (raises ValueError for a file that is not a valid VHD/VHDX)."""
    raise NotImplementedError


def guest_write(path: Path, offset: int, data: bytes) -> None:
    """Write as a guest would: allocate blocks / sector bitmaps as needed, grow the file."""
    raise NotImplementedError


def guest_trim(path: Path, offset: int, length: int) -> None:
    """Unmap a range as a guest TRIM would (whole blocks become unmapped, partial ones zeroed)."""
    raise NotImplementedError


def read_virtual(path: Path, offset: int, length: int, parent: Optional[Path] = None) -> bytes:
    """Read guest-visible bytes (through the parent chain for differencing disks)."""
    raise NotImplementedError


def merge_into_parent(child: Path, parent: Path) -> None:
    """Write every block the child holds into the parent, as Hyper-V merges a checkpoint."""
    raise NotImplementedError
