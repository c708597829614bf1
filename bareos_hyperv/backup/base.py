"""What one job leaves for the next incremental or differential: the base of each disk file.

Bareos carries it (``DESIGN.md`` "Backup, per VM"; reference §3.2, §12): every backup saves,
besides the VM's final manifest, one restore object per disk file with that file's image as the
job left it (:class:`DiskBase`): its chunk digests and image digest, its plain SHA-256 when
known, the VHDX block allocation table (so that an RCT delta can tell which blocks moved), and
the chain of save-set parts a restore applies to rebuild it.  An Incremental receives the
objects of the most recent successful job of the same job and FileSet, a Differential those of
the last Full, before ``bEventStartBackupJob``; nothing is kept on the fd host.

Object text: one JSON document (``"kind": "bareos-hyperv disk base"``, ``"version": 1``); binary
fields are base64 (the BAT zlib-compressed first).  It must fit one restore object
(:data:`MAX_OBJECT_BYTES`); a file whose base does not fit gets none, and its next backup is a
full copy of it, said in the job log.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bareos_hyperv.errors import ManifestError
from bareos_hyperv.manifest.document import Manifest, from_xml
from bareos_hyperv.manifest.layout import MANIFEST_OBJECT
from bareos_hyperv.model.backup import ChainPart, PartKind
from bareos_hyperv.protocol.messages import RestoreObject
from bareos_hyperv.storage.delta import DeltaFormatError, ImageHashes

__all__ = ["BASE_KIND", "MANIFEST_OBJECT", "MAX_OBJECT_BYTES", "DiskBase", "PreviousBackup", "VmBase",
           "base_object_name", "previous_backup"]

BASE_KIND = "bareos-hyperv disk base"
BASE_VERSION = 1
# The final manifest (sizes and digests of every part) is also saved as a restore object, which
# Bareos hands to a restore before any data (reference §7, §12); the fd plugin looks for this name.
BASE_OBJECT_PREFIX = "base-"
BASE_OBJECT_SUFFIX = ".object.json"
# A restore object must fit one network message of the fd (1,000,000 bytes, reference §7).
MAX_OBJECT_BYTES = 900_000
_ADVICE = "the previous backup's records are damaged; the next Full backup starts a new chain"


def base_object_name(vm_directory: str, index: int) -> str:
    """Catalog name of the restore object with the base of disk file ``index`` of a VM."""
    return f"{vm_directory}/{BASE_OBJECT_PREFIX}{index}{BASE_OBJECT_SUFFIX}"


@dataclass
class DiskBase:
    """One disk file's image as a job left it (see module docstring).

    ``job_id`` is the job whose image this is (the job that wrote the last part of ``chain``, or
    a later one that found the file unchanged); ``path`` the host path the image came from.
    ``bat`` is the raw VHDX BAT region (``bat_offset`` its file offset), empty for VHD files.
    ``zeros`` are the file ranges where the image holds zeros the file itself may not (what a
    sparse full did not read and no later delta overwrote; ``docs/delta-format.md``).
    """

    vm_guid: str
    index: int
    path: str
    disk_format: str
    disk_id: Optional[str]
    virtual_size: int
    block_size: int
    job_id: int
    hashes: ImageHashes
    sha256: Optional[str] = None
    chain: List[ChainPart] = field(default_factory=list)
    bat_offset: int = 0
    bat: bytes = b""
    zeros: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """The image digest."""
        return self.hashes.digest()

    def to_text(self) -> str:
        """The restore object's text."""
        doc: Dict[str, Any] = {
            "kind": BASE_KIND,
            "version": BASE_VERSION,
            "vm": self.vm_guid,
            "index": self.index,
            "path": self.path,
            "format": self.disk_format,
            "diskId": self.disk_id,
            "virtualSize": self.virtual_size,
            "blockSize": self.block_size,
            "job": self.job_id,
            "size": self.hashes.size,
            "chunkSize": self.hashes.chunk_size,
            "digest": self.digest,
            "sha256": self.sha256,
            "hashes": base64.b64encode(self.hashes.to_bytes()).decode("ascii"),
            "batOffset": self.bat_offset,
            "bat": base64.b64encode(zlib.compress(self.bat, 6)).decode("ascii") if self.bat else "",
            "chain": [{"job": c.job_id, "name": c.name, "kind": c.kind.value, "digest": c.image_digest}
                      for c in self.chain],
        }
        if self.zeros:
            doc["zeros"] = [[o, n] for o, n in self.zeros]
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_text(cls, text: str, *, source: str) -> DiskBase:
        """Parse a base object; :class:`ManifestError` names ``source`` when it is not one."""

        def bad(problem: str) -> ManifestError:
            return ManifestError(f"the disk base {source} {problem}", what_to_do=_ADVICE)

        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise bad(f"is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != BASE_KIND:
            raise bad("is not a bareos-hyperv disk base")
        if doc.get("version") != BASE_VERSION:
            raise bad(f"is version {doc.get('version')!r}; this bareos-hyperv reads version {BASE_VERSION}")
        try:
            hashes = ImageHashes.from_bytes(int(doc["chunkSize"]), int(doc["size"]),
                                            base64.b64decode(doc["hashes"], validate=True))
            if hashes.digest() != doc["digest"]:
                raise bad("has chunk digests that do not give its image digest")
            bat = zlib.decompress(base64.b64decode(doc["bat"], validate=True)) if doc["bat"] else b""
            chain = [ChainPart(job_id=int(c["job"]), name=str(c["name"]), kind=PartKind(c["kind"]),
                               image_digest=str(c["digest"])) for c in doc["chain"]]
            return cls(vm_guid=str(doc["vm"]), index=int(doc["index"]), path=str(doc["path"]),
                       disk_format=str(doc["format"]), disk_id=doc.get("diskId"),
                       virtual_size=int(doc["virtualSize"]), block_size=int(doc["blockSize"]),
                       job_id=int(doc["job"]), hashes=hashes, sha256=doc.get("sha256"), chain=chain,
                       bat_offset=int(doc["batOffset"]), bat=bat, zeros=_zeros(doc.get("zeros", []), hashes.size))
        except (KeyError, TypeError, ValueError, binascii.Error, zlib.error, DeltaFormatError) as exc:
            raise bad(f"is incomplete or damaged ({type(exc).__name__}: {exc})") from None


def _zeros(value: Any, size: int) -> List[Tuple[int, int]]:
    """The ``zeros`` ranges of a base object: sorted, disjoint, inside the image."""
    out: List[Tuple[int, int]] = []
    end = 0
    for raw_offset, raw_length in value:
        offset, length = int(raw_offset), int(raw_length)
        if offset < end or length <= 0 or offset + length > size:
            raise ValueError(f"zero range {offset}+{length} is out of order or outside the image")
        out.append((offset, length))
        end = offset + length
    return out


@dataclass
class VmBase:
    """One VM in the previous backup: its final manifest and the base of each disk file by host path."""

    manifest: Manifest
    disks: Dict[str, DiskBase] = field(default_factory=dict)  # lower-case host path -> base

    def base_for(self, path: str) -> Optional[DiskBase]:
        """The base of the disk file at ``path`` (compared case-insensitively, as Windows does)."""
        return self.disks.get(path.lower())


@dataclass
class PreviousBackup:
    """What Bareos delivered of the job an Incremental or Differential builds on, per VM GUID."""

    job_id: Optional[int] = None
    vms: Dict[str, VmBase] = field(default_factory=dict)  # upper-case VM GUID -> VM
    problems: List[str] = field(default_factory=list)  # objects that could not be used, and why

    def vm(self, guid: str) -> Optional[VmBase]:
        """The VM's previous backup, None when the previous job did not save it."""
        return self.vms.get(guid.upper())


def previous_backup(objects: Sequence[RestoreObject]) -> PreviousBackup:
    """Sort the restore objects of the previous job into manifests and disk bases per VM.

    An object that cannot be read is reported in ``problems`` (its VM or disk file then gets a
    full copy); it never fails the job.
    """
    out = PreviousBackup()
    manifests: Dict[str, Manifest] = {}
    bases: List[DiskBase] = []
    for obj in objects:
        out.job_id = obj.jobid if out.job_id is None else max(out.job_id, obj.jobid)
        try:
            if obj.name.endswith("/" + MANIFEST_OBJECT):
                manifest = from_xml(obj.data.encode("utf-8"), source=f"{obj.name} (job {obj.jobid})")
                manifests[manifest.vm.ref.guid.upper()] = manifest
            elif obj.name.endswith(BASE_OBJECT_SUFFIX):
                bases.append(DiskBase.from_text(obj.data, source=f"{obj.name} (job {obj.jobid})"))
        except ManifestError as exc:
            out.problems.append(str(exc))
    for guid, manifest in manifests.items():
        out.vms[guid] = VmBase(manifest)
    for base in bases:
        vm = out.vms.get(base.vm_guid.upper())
        if vm is not None:
            vm.disks[base.path.lower()] = base
    return out


def rct_ids(manifest: Manifest) -> Mapping[str, str]:
    """RCT id per virtual disk identifier (lower case) of the reference point the manifest records."""
    point = manifest.backup.reference_point
    return {} if point is None else {e.virtual_disk_id.lower(): e.rct_id for e in point.rct}
