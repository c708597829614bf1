"""Virtual disk facts and changed ranges from Hyper-V's image service (``hyperv-wmi.md`` §4.4, §5.5)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

from bareos_hyperv.errors import BareosHyperVError, HyperVError
from bareos_hyperv.hyperv.jobs import JobError, JobFollower
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.model.disk import DiskFormat, DiskType, VirtualDiskInfo
from bareos_hyperv.wsman.cim import CimInstance

MAX_CHAIN = 64  # a longer parent chain is a loop or damage, not a real checkpoint tree

#: ``child host path -> parent host path``, searched where the child's own header says
#: (``backup.chains.parent_finder``); raises, naming every path tried, when nothing is the parent.
ParentFinder = Callable[[str], str]

log = logging.getLogger("bareos_hyperv.hyperv.images")


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

    def chain(self, path: str, *, find_parent: Optional[ParentFinder] = None) -> list[VirtualDiskInfo]:
        """The disk and its parents, leaf first; refuses loops.

        When the parent path Hyper-V reports for a differencing disk cannot be read (the path
        written in the child is stale: files moved or copied by hand), ``find_parent(child path)``
        looks where the child's header says (relative locator, the parent's name next to the
        child); the child's recorded parent then becomes the path found, with a warning.  Its
        error, when nothing is the parent, names every path tried, Hyper-V's first.
        """
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
            try:
                info = self.info(current)
            except JobError as exc:
                if not chain or find_parent is None:
                    raise
                child = chain[-1]
                found = self._find_parent(find_parent, child.path, current, exc)
                log.warning("%s: Hyper-V names its parent %s, which cannot be read (%s); the parent was found at %s",
                            child.path, current, exc.message, found)
                chain[-1] = dataclasses.replace(child, parent_path=found)
                key = found.lower()
                if key in seen:
                    raise HyperVError("the disk's parent chain loops", context={
                        "host": self.services.node, "path": path, "at": found}) from exc
                seen.add(key)
                info = self.info(found)
            chain.append(info)
            current = info.parent_path
        return chain

    def _find_parent(self, find_parent: ParentFinder, child: str, reported: str, exc: JobError) -> str:
        try:
            return find_parent(child)
        except BareosHyperVError as err:
            raise HyperVError(
                f"the parent of the differencing disk {child} was not found: Hyper-V names {reported} "
                f"({exc.message}), and {err.message}",
                context={"host": self.services.node, "disk": child},
                what_to_do="put the parent next to the child under the name it had, or reconnect the chain on "
                           "the host (Set-VHD -ParentPath, or Edit Disk > Reconnect in Hyper-V Manager)",
            ) from err

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
