"""Virtual disk facts and changed ranges from Hyper-V's image service (``hyperv-wmi.md`` §4.4, §5.5)."""

from __future__ import annotations

from typing import Optional

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv.jobs import JobFollower
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.disk import DiskFormat, DiskType, VirtualDiskInfo
from bareos_hyperv.wsman.cim import CimInstance

MAX_CHAIN = 64  # a longer parent chain is a loop or damage, not a real checkpoint tree


class ImageService:
    """Read disk settings and RCT changes through ``Msvm_ImageManagementService``."""

    def __init__(self, services: HostServices, *, timeout: float = 600.0) -> None:
        self.services = services
        self.jobs = JobFollower(services.client)
        self.timeout = timeout

    def info(self, path: str) -> VirtualDiskInfo:
        """Format, type, sizes and parent of one disk file (``GetVirtualHardDiskSettingData``)."""
        result = self.jobs.call(self.services.images, "GetVirtualHardDiskSettingData", [("Path", path)],
                                timeout=self.timeout)
        data = result.outputs.get("SettingData")
        if not isinstance(data, CimInstance):
            raise HyperVError("the image service returned no setting data for a disk",
                              context={"host": self.services.node, "path": path},
                              what_to_do="check that the file exists and is a VHD or VHDX")
        return _disk_info(path, data)

    def chain(self, path: str) -> list[VirtualDiskInfo]:
        """The disk and its parents, leaf first; refuses loops."""
        chain: list[VirtualDiskInfo] = []
        seen: set[str] = set()
        current: Optional[str] = path
        while current:
            key = current.lower()
            if key in seen or len(chain) >= MAX_CHAIN:
                raise HyperVError("the disk's parent chain loops or is too long",
                                  context={"host": self.services.node, "path": path, "at": current},
                                  what_to_do="repair the chain on the host (Inspect-VHD / Set-VHD -ParentPath)")
            seen.add(key)
            info = self.info(current)
            chain.append(info)
            current = info.parent_path
        return chain

    def changed_ranges(self, path: str, limit_id: str, virtual_size: int) -> list[tuple[int, int]]:
        """Virtual byte ranges changed since the RCT id ``limit_id`` (``GetVirtualDiskChanges``).

        ``path`` is the frozen file of the disk (the checkpoint's parent).  Hyper-V may process
        less than asked per call (``ProcessedByteLength``); the calls go on until the whole disk is
        covered.  ``ByteLength`` must stay below the disk size (``hyperv-wmi.md`` §4.4), so the
        first call leaves out the last byte and a second one asks for it.  A 4096 answer is a job,
        followed to its end.
        """
        ranges: list[tuple[int, int]] = []
        offset = 0
        while offset < virtual_size:
            length = min(virtual_size - offset, max(virtual_size - 1, 1))
            result = self.jobs.call(
                self.services.images, "GetVirtualDiskChanges",
                [("Path", path), ("LimitId", limit_id), ("ByteOffset", offset),
                 ("ByteLength", length)],
                timeout=self.timeout,
                out_types={"ProcessedByteLength": "uint64", "ChangedByteOffsets": "uint64[]",
                           "ChangedByteLengths": "uint64[]"},
            )
            out = result.outputs
            processed = out.int("ProcessedByteLength")
            if processed <= 0:
                raise HyperVError("GetVirtualDiskChanges made no progress",
                                  context={"host": self.services.node, "path": path, "offset": offset},
                                  what_to_do="run a full backup; change tracking may be reset")
            offs = out.ints("ChangedByteOffsets")
            lens = out.ints("ChangedByteLengths")
            if len(offs) != len(lens):
                raise HyperVError("GetVirtualDiskChanges returned mismatched range lists",
                                  context={"host": self.services.node, "path": path})
            ranges.extend(zip(offs, lens))
            offset += processed
        return ranges


def _disk_info(path: str, data: CimInstance) -> VirtualDiskInfo:
    try:
        fmt = DiskFormat(data.int("Format"))
        kind = DiskType(data.int("Type"))
    except ValueError as exc:
        raise HyperVError("the image service reported an unknown disk format or type",
                          context={"path": path, "detail": str(exc)}) from exc
    parent = data.opt_str("ParentPath") or None
    return VirtualDiskInfo(
        path=data.opt_str("Path") or path,
        format=fmt,
        type=kind,
        virtual_size=data.int("MaxInternalSize"),
        block_size=data.opt_int("BlockSize") or 0,
        logical_sector_size=data.opt_int("LogicalSectorSize") or 512,
        physical_sector_size=data.opt_int("PhysicalSectorSize") or 512,
        parent_path=parent,
        disk_id=data.opt_str("VirtualDiskId"),
    )
