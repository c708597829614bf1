"""VHD/VHDX reader: validated layout, virtual-to-file block map, differencing chains.

Imports nothing from bareos_hyperv but ``errors``; reads through a :class:`RandomAccessSource`
(``read_at(offset, length)``, ``size()``) so the SMB data plane can plug in its own adapter.
"""

from __future__ import annotations

from bareos_hyperv.storage.vhd.crc32c import crc32c
from bareos_hyperv.storage.vhd.reader import (
    MAX_CHAIN_DEPTH,
    MAX_READ_LENGTH,
    BlockKind,
    BytesSource,
    DiskChain,
    DiskFormat,
    DiskLayout,
    DiskType,
    Extent,
    ExtentKind,
    FileRange,
    FileSource,
    MappedBlock,
    ParentLocator,
    RandomAccessSource,
    VhdChainError,
    VhdCorruptError,
    VhdError,
    VhdFormatError,
    VhdLimitError,
    VhdLogReplayRequiredError,
    VhdRangeError,
    VhdTruncatedError,
    VhdUnsupportedError,
    VirtualDisk,
    locate_parent,
    open_disk,
    open_file,
    parent_candidates,
    resolve_chain,
)
from bareos_hyperv.storage.vhd.structures import PayloadBlockState, SectorBitmapState

__all__ = [
    "MAX_CHAIN_DEPTH",
    "MAX_READ_LENGTH",
    "BlockKind",
    "BytesSource",
    "DiskChain",
    "DiskFormat",
    "DiskLayout",
    "DiskType",
    "Extent",
    "ExtentKind",
    "FileRange",
    "FileSource",
    "MappedBlock",
    "ParentLocator",
    "PayloadBlockState",
    "RandomAccessSource",
    "SectorBitmapState",
    "VhdChainError",
    "VhdCorruptError",
    "VhdError",
    "VhdFormatError",
    "VhdLimitError",
    "VhdLogReplayRequiredError",
    "VhdRangeError",
    "VhdTruncatedError",
    "VhdUnsupportedError",
    "VirtualDisk",
    "crc32c",
    "locate_parent",
    "open_disk",
    "open_file",
    "parent_candidates",
    "resolve_chain",
]
