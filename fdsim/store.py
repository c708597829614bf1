"""Save-set store and catalog of the fd emulation (what the SD volumes and the director's catalog
are to a real Bareos job).

Layout under the store directory::

    catalog.json          jobs, file versions (the File table) and restore objects
    vol-<jobid>.bin       the job's record stream: per item a start record with the
                          attributes, data records (file address + bytes), ACL and xattr
                          records, and an end record

Restore selection follows bconsole ``restore`` "select most recent backup" of one FileSet: the
last Full, the last Differential after it, every Incremental after that, the newest version of
each path (a path whose newest version is an FT_DELETED record is gone), fed back in
(JobId, FileIndex) order as a bootstrap file would.  The restore objects of those jobs come in the
director's order (:meth:`SaveSetStore.restore_objects`).
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import os
import struct
import threading
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Sequence, Tuple, TypeVar, Union, cast

FT_DIREND = 5
FT_DELETED = 23
FT_RESTORE_FIRST, FT_PLUGIN_CONFIG, FT_PLUGIN_CONFIG_FILLED = 25, 27, 28
OBJECT_TYPES = (FT_RESTORE_FIRST, FT_PLUGIN_CONFIG, FT_PLUGIN_CONFIG_FILLED)
GOOD_JOB_STATUS = ("T", "W")
# Bareos compresses restore objects above this size when zlib makes them smaller (§7).
OBJECT_COMPRESS_THRESHOLD = 1000

_REC = struct.Struct(">cI")
_ADDR = struct.Struct(">Q")
_NAMELEN = struct.Struct(">I")
TAG_START, TAG_DATA, TAG_ACL, TAG_XATTR, TAG_END = b"S", b"D", b"A", b"X", b"E"


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run a :class:`SaveSetStore` method under the store's lock (jobs run on threads of their own)."""
    @functools.wraps(method)
    def wrapper(self: SaveSetStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return cast(_F, wrapper)


class StoreError(RuntimeError):
    """The store cannot answer: unknown job, no backup to restore, damaged volume."""


@dataclass
class JobRecord:
    """One catalog Job row."""

    jobid: int
    name: str
    job_type: str  # 'B' backup, 'R' restore
    level: str  # 'F', 'I', 'D', or ' ' for restores
    status: str = "R"
    start_time: int = 0
    end_time: int = 0
    since: int = 0
    prev_job: str = ""
    fileset: List[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


@dataclass
class FileRecord:
    """One File row: a version of a path in a job, with where its records start in the volume."""

    jobid: int
    file_index: int
    fname: str  # catalog name (FT_DIREND: the link with its trailing '/')
    type: int
    statp: Dict[str, int]
    cmd: str  # full plugin string of the Plugin= line
    offset: int = -1  # start record in vol-<jobid>.bin; -1 for objects and deleted entries
    delta_seq: int = 0

    @property
    def size(self) -> int:
        return int(self.statp.get("st_size", 0))

    @property
    def mtime(self) -> int:
        return int(self.statp.get("st_mtime", 0))


@dataclass
class StoredObject:
    """One RestoreObject row."""

    jobid: int
    file_index: int
    object_name: str
    plugin_name: str
    object_type: int
    object_index: int
    object_len: int  # length after inflating
    object_full_len: int
    object_compression: int
    data_b64: str  # as stored (compressed when object_compression == 1)

    def inflated(self) -> bytes:
        data = base64.b64decode(self.data_b64)
        return zlib.decompress(data) if self.object_compression else data


@dataclass
class Item:
    """One item read back from a volume."""

    attrs: Dict[str, Any]
    data: List[Tuple[int, int]] = field(default_factory=list)  # (address, length) for streaming
    acl: bytes | None = None
    xattrs: List[Tuple[bytes, bytes]] = field(default_factory=list)


class JobWriter:
    """Appends one job's records to its volume; the catalog rows go in at :meth:`SaveSetStore.commit`."""

    def __init__(self, store: SaveSetStore, job: JobRecord) -> None:
        self.store = store
        self.job = job
        self.path = store.volume_path(job.jobid)
        self._fh: BinaryIO = open(self.path, "wb")  # noqa: SIM115  # closed in close()
        self.files: List[FileRecord] = []
        self.objects: List[StoredObject] = []
        self.next_index = 0

    def _record(self, tag: bytes, payload: bytes) -> None:
        self._fh.write(_REC.pack(tag, len(payload)))
        self._fh.write(payload)

    def new_file_index(self) -> int:
        self.next_index += 1
        return self.next_index

    def begin_item(self, record: FileRecord, attrs: Dict[str, Any]) -> None:
        record.offset = self._fh.tell()
        self._record(TAG_START, json.dumps(attrs).encode())
        self.files.append(record)

    def data(self, address: int, chunk: Union[bytes, memoryview]) -> None:
        """One data record; ``chunk`` is written as it is (a view of the reader's buffer is not copied)."""
        self._fh.write(_REC.pack(TAG_DATA, _ADDR.size + len(chunk)) + _ADDR.pack(address))
        self._fh.write(chunk)

    def acl(self, content: bytes) -> None:
        self._record(TAG_ACL, content)

    def xattr(self, name: bytes, value: bytes) -> None:
        self._record(TAG_XATTR, _NAMELEN.pack(len(name)) + name + value)

    def end_item(self) -> None:
        self._record(TAG_END, b"")

    def add_catalog_only(self, record: FileRecord) -> None:
        """Objects and deleted entries: catalog rows without volume data."""
        self.files.append(record)

    def add_object(self, jobid: int, file_index: int, pkt: Dict[str, Any], cmd: str) -> None:
        data: bytes = pkt["object"]
        stored, compression = data, 0
        if len(data) > OBJECT_COMPRESS_THRESHOLD:
            packed = zlib.compress(data)
            if len(packed) < len(data):
                stored, compression = packed, 1
        self.objects.append(StoredObject(
            jobid=jobid, file_index=file_index, object_name=pkt["object_name"], plugin_name=cmd,
            object_type=pkt["type"], object_index=pkt["object_index"], object_len=len(data),
            object_full_len=len(data), object_compression=compression,
            data_b64=base64.b64encode(stored).decode()))

    def close(self) -> None:
        self._fh.close()


class SaveSetStore:
    """Volumes and catalog under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.catalog_path = self.root / "catalog.json"
        # Concurrent jobs (one thread each) share the catalog, as a real director's jobs share theirs.
        self._lock = threading.RLock()
        self._jobs: List[JobRecord] = []
        self._files: Dict[int, List[FileRecord]] = {}
        self._objects: Dict[int, List[StoredObject]] = {}
        self._next_jobid = 1
        if self.catalog_path.exists():
            self._load()

    # -- persistence ---------------------------------------------------------------------------
    def _load(self) -> None:
        raw = json.loads(self.catalog_path.read_text())
        self._next_jobid = int(raw["next_jobid"])
        self._jobs = [JobRecord(**j) for j in raw["jobs"]]
        self._files = {int(k): [FileRecord(**f) for f in v] for k, v in raw["files"].items()}
        self._objects = {int(k): [StoredObject(**o) for o in v] for k, v in raw["objects"].items()}

    @_locked
    def _save(self) -> None:
        raw = {"next_jobid": self._next_jobid, "jobs": [asdict(j) for j in self._jobs],
               "files": {str(k): [asdict(f) for f in v] for k, v in self._files.items()},
               "objects": {str(k): [asdict(o) for o in v] for k, v in self._objects.items()}}
        # A name of this process and thread: two stores (or processes) on one directory never share it.
        tmp = self.catalog_path.with_name(f".catalog.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(raw, indent=1))
        os.replace(tmp, self.catalog_path)

    def volume_path(self, jobid: int) -> Path:
        return self.root / f"vol-{jobid}.bin"

    # -- jobs ----------------------------------------------------------------------------------
    @_locked
    def new_job(self, name: str, job_type: str, level: str, start_time: int) -> JobRecord:
        """Reserve a JobId (like the director's Job row at job start)."""
        job = JobRecord(jobid=self._next_jobid, name=f"{name}.{_job_suffix(start_time, self._next_jobid)}",
                        job_type=job_type, level=level, start_time=start_time)
        self._next_jobid += 1
        self._jobs.append(job)
        self._save()
        return job

    def writer(self, job: JobRecord) -> JobWriter:
        return JobWriter(self, job)

    @_locked
    def commit(self, job: JobRecord, writer: JobWriter | None) -> None:
        """Store the job's final row and, for backups, its File and RestoreObject rows."""
        if writer is not None:
            writer.close()
            self._files[job.jobid] = writer.files
            self._objects[job.jobid] = writer.objects
        self._save()

    @_locked
    def jobs(self) -> List[JobRecord]:
        return list(self._jobs)

    @_locked
    def job(self, jobid: int) -> JobRecord:
        for job in self._jobs:
            if job.jobid == jobid:
                return job
        raise StoreError(f"fdsim store {self.root}: no job with JobId {jobid}; run list_jobs() to see them")

    @_locked
    def files(self, jobid: int) -> List[FileRecord]:
        return list(self._files.get(jobid, []))

    @_locked
    def objects(self, jobids: Sequence[int], types: Sequence[int] = (25, 27)) -> List[StoredObject]:
        """Restore objects of these jobs (by default FT_RESTORE_FIRST and FT_PLUGIN_CONFIG), job by
        job in the order the backup made them (what an Incremental backup is sent, see fd.py)."""
        out: List[StoredObject] = []
        for jobid in sorted(jobids):
            out.extend(o for o in self._objects.get(jobid, []) if o.object_type in types)
        return out

    @_locked
    def restore_objects(self, jobids: Sequence[int]) -> List[StoredObject]:
        """The objects a restore of these JobIds is sent, in the director's order.

        dird ``fd_cmds.cc`` ``SendGlobalRestoreObjects`` runs the catalog query
        ``get_restore_objects`` (``cats/postgresql_queries.inc``: ``WHERE JobId IN (<all JobIds of
        the restore>) AND ObjectType = %d ORDER BY ObjectIndex ASC``) once for FT_RESTORE_FIRST,
        then once for FT_PLUGIN_CONFIG: ordered by ObjectIndex across the jobs, not job by job.
        Equal ObjectIndex values came in JobId order on a real PostgreSQL catalog (reference §12);
        the stable sort below keeps that.  (A third query sends FT_PLUGIN_CONFIG_FILLED objects of
        the restore job itself; fdsim's restore jobs have none.)
        """
        ordered = sorted(jobids)
        out: List[StoredObject] = []
        for object_type in (FT_RESTORE_FIRST, FT_PLUGIN_CONFIG):
            rows = [o for jobid in ordered for o in self._objects.get(jobid, []) if o.object_type == object_type]
            out.extend(sorted(rows, key=lambda o: o.object_index))
        return out

    # -- selection -----------------------------------------------------------------------------
    def _backups(self, fileset: Sequence[str] | None) -> List[JobRecord]:
        return [j for j in self._jobs if j.job_type == "B" and j.status in GOOD_JOB_STATUS
                and (fileset is None or list(fileset) == j.fileset)]

    @_locked
    def previous_job(self, level: str, fileset: Sequence[str]) -> JobRecord | None:
        """The job an Incremental (newest good backup) or Differential (newest Full) is based on."""
        backups = self._backups(fileset)
        if level == "D":
            backups = [j for j in backups if j.level == "F"]
        return backups[-1] if backups else None

    @_locked
    def last_full(self, fileset: Sequence[str]) -> JobRecord | None:
        fulls = [j for j in self._backups(fileset) if j.level == "F"]
        return fulls[-1] if fulls else None

    @_locked
    def most_recent_jobids(self, fileset: Sequence[str] | None = None, *, upto: int | None = None) -> List[int]:
        """Full + last Differential after it + Incrementals after that, oldest first.

        All of one FileSet, as dird ``ua_restore.cc`` selects them (``select_backups_before_date``
        filters by Client and FileSet): without ``fileset``, the FileSet of the newest successful
        backup (where bconsole would ask which FileSet), so jobs of two FileSets never mix.
        ``upto`` restores an older point: only backups up to that JobId count (bconsole's
        "before date" selection, by job).
        """
        if fileset is None:
            newest = [j for j in self._backups(None) if upto is None or j.jobid <= upto]
            if newest:
                fileset = newest[-1].fileset
        backups = [j for j in self._backups(fileset) if upto is None or j.jobid <= upto]
        fulls = [j for j in backups if j.level == "F"]
        if not fulls:
            raise StoreError(f"fdsim store {self.root}: no successful Full backup"
                             + (f" of fileset {list(fileset)}" if fileset else "")
                             + "; run a Full backup first")
        full = fulls[-1]
        chain = [full]
        later = [j for j in backups if j.jobid > full.jobid]
        diffs = [j for j in later if j.level == "D"]
        base = full
        if diffs:
            chain.append(diffs[-1])
            base = diffs[-1]
        chain.extend(j for j in later if j.level == "I" and j.jobid > base.jobid)
        return [j.jobid for j in chain]

    @_locked
    def current_state(self, jobids: Sequence[int]) -> Dict[str, FileRecord]:
        """Newest version of each path over these jobs, deleted paths dropped (accurate list)."""
        newest: Dict[str, FileRecord] = {}
        for jobid in sorted(jobids):
            for rec in self._files.get(jobid, []):
                newest[rec.fname] = rec
        return {name: rec for name, rec in newest.items() if rec.type != FT_DELETED}

    @_locked
    def select_files(self, jobids: Sequence[int], patterns: Sequence[str] | None = None) -> List[FileRecord]:
        """Items to restore, in (JobId, FileIndex) order; objects are not items."""
        state = self.current_state(jobids)
        chosen = [r for r in state.values() if r.type not in OBJECT_TYPES and r.offset >= 0]
        if patterns is not None:
            chosen = [r for r in chosen if _matches(r.fname, patterns)]
        return sorted(chosen, key=lambda r: (r.jobid, r.file_index))

    # -- reading volumes -----------------------------------------------------------------------
    def read_item(self, rec: FileRecord) -> Item:
        """Attributes and record positions of one item (data is read with :meth:`read_data`)."""
        with open(self.volume_path(rec.jobid), "rb") as fh:
            fh.seek(rec.offset)
            tag, payload = _read_record(fh)
            if tag != TAG_START:
                raise StoreError(f"fdsim store: volume of JobId {rec.jobid} damaged at {rec.offset}")
            item = Item(attrs=json.loads(payload))
            while True:
                pos = fh.tell()
                tag, length = _REC.unpack(fh.read(_REC.size))
                if tag == TAG_END:
                    return item
                if tag == TAG_DATA:
                    item.data.append((pos, length))
                    fh.seek(length, os.SEEK_CUR)
                    continue
                body = fh.read(length)
                if tag == TAG_ACL:
                    item.acl = body
                elif tag == TAG_XATTR:
                    (nlen,) = _NAMELEN.unpack(body[: _NAMELEN.size])
                    rest = body[_NAMELEN.size:]
                    item.xattrs.append((rest[:nlen], rest[nlen:]))

    def read_data(self, jobid: int, records: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, memoryview]]:
        """Yield (file address, data) of the data records, one at a time.

        The data is a view into the record as read (the C core does not copy a record to strip its
        header either; a copy per record would be charged to the plugin in the benchmarks)."""
        with open(self.volume_path(jobid), "rb") as fh:
            for pos, length in records:
                fh.seek(pos + _REC.size)
                body = fh.read(length)
                (address,) = _ADDR.unpack_from(body, 0)
                yield address, memoryview(body)[_ADDR.size:]

    # -- listing -------------------------------------------------------------------------------
    @_locked
    def list_files(self, jobid: int) -> List[str]:
        """Names of a job's files, like bconsole ``list files jobid=N``."""
        self.job(jobid)
        return [r.fname for r in self._files.get(jobid, [])]

    @_locked
    def format_listing(self, jobid: int) -> str:
        """ls-style listing of a job with type, size and mtime, for demos."""
        job = self.job(jobid)
        lines = [f"JobId {job.jobid} {job.name} level={job.level} status={job.status} "
                 f"files={job.files} bytes={job.bytes}"]
        for r in self._files.get(jobid, []):
            lines.append(f"{r.file_index:6d} type={r.type:2d} {r.size:>14d} {r.mtime:>11d} {r.fname}")
        return "\n".join(lines)


def _read_record(fh: BinaryIO) -> Tuple[bytes, bytes]:
    tag, length = _REC.unpack(fh.read(_REC.size))
    return tag, fh.read(length)


def _matches(fname: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatchcase(fname, pattern):
            return True
        if pattern.endswith("/") and fname.startswith(pattern):
            return True
    return False


def _job_suffix(start_time: int, jobid: int) -> str:
    import time

    return time.strftime("%Y-%m-%d_%H.%M.%S", time.localtime(start_time)) + f"_{jobid % 100:02d}"
