"""Virtual disk facts as Hyper-V's image service reports them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class DiskFormat(enum.IntEnum):
    """``Msvm_VirtualHardDiskSettingData.Format``."""

    VHD = 2
    VHDX = 3
    VHDSET = 4


class DiskType(enum.IntEnum):
    """``Msvm_VirtualHardDiskSettingData.Type``."""

    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


@dataclass(frozen=True)
class VirtualDiskInfo:
    """One disk file: format, type, sizes, and its parent when differencing."""

    path: str
    format: DiskFormat
    type: DiskType
    virtual_size: int
    block_size: int
    logical_sector_size: int
    physical_sector_size: int
    parent_path: Optional[str] = None
    disk_id: Optional[str] = None
