"""Full backup of Hyper-V VMs: the ``hyperv`` source of the agent (``DESIGN.md`` "Backup, per VM").

The job works one VM at a time, and each VM is finished and cleaned up before the next
starts.  The fd asks for items in batches (:class:`~bareos_hyperv.agent.sources.Source`), so
for every VM the source hands out two batches:

1. ``manifest.xml``, ``config/*`` (configuration-only export of the checkpoint) and
   ``disks/<n>-<file>`` (every file of every disk chain, frozen by the checkpoint);
2. ``SHA256SUMS``: the digest of every file of the VM's tree as the core received it,
   listed once the data is saved and the checkpoint has become a reference point.

The manifest comes first so that a restore meets it before any data; digests can only be
known after the bytes went through, hence the trailer (``sha256sum -c`` reads it as it is).

Cleanup is part of every outcome: the checkpoint becomes a reference point on success and is
destroyed otherwise, the staging folder is removed, and recovery checkpoints an interrupted
job of this plugin left behind are removed before a new one is taken.

An agent that is killed cannot clean up, so the source tells the fd, with every batch, what
would have to be undone if the job ended now (:meth:`HyperVBackupSource.pending_cleanup`, a
:class:`~bareos_hyperv.protocol.messages.CleanupRecord`); when the agent dies the fd starts a
fresh one whose :meth:`HyperVBackupSource.cleanup` removes exactly that, finding the VM's owner
again if it migrated.  The next job's stale-checkpoint sweep remains the last safety net.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import io
import logging
import stat as stat_mod
import time
from dataclasses import dataclass, field
from pathlib import PureWindowsPath
from typing import Dict, List, Mapping, Optional, Sequence

from bareos_hyperv import __version__
from bareos_hyperv.backup.base import (
    MANIFEST_OBJECT,
    MAX_OBJECT_BYTES,
    DiskBase,
    PreviousBackup,
    VmBase,
    base_object_name,
    previous_backup,
    rct_ids,
)
from bareos_hyperv.backup.chains import parent_finder
from bareos_hyperv.backup.context import SourceContext
from bareos_hyperv.backup.incremental import FilePlan, plan_file
from bareos_hyperv.errors import BareosHyperVError, ConfigurationError, HyperVError, StorageError
from bareos_hyperv.hyperv import cluster as clusterops
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv import vms as vmops
from bareos_hyperv.hyperv.checkpoints import (
    NAME_PREFIX,
    Achieved,
    Checkpoint,
    CheckpointManager,
    ReferencePoint,
    device_key,
)
from bareos_hyperv.hyperv.checkpoints import Consistency as ConsistencyOption
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.exporter import export_configuration
from bareos_hyperv.hyperv.host import host_facts
from bareos_hyperv.hyperv.images import ImageService
from bareos_hyperv.hyperv.schema import to_typed_cimxml
from bareos_hyperv.hyperv.services import HostServices
from bareos_hyperv.manifest.document import Manifest, VmSettings, to_xml
from bareos_hyperv.manifest.layout import (
    CONFIG_DIR,
    DELTA_MARKER,
    DISKS_DIR,
    MANIFEST_FILE,
    ROOT,
    SPARSE_MARKER,
    escape_component,
    vm_directories,
)
from bareos_hyperv.model.backup import (
    CONSISTENCY_FROM_JOB,
    CONSISTENCY_FROM_REFERENCE_POINT,
    BackupFacts,
    BackupLevel,
    CapturedSettings,
    ChainPart,
    Consistency,
    ConsistencyMode,
    Controller,
    DeltaMethod,
    DiskBackup,
    DiskFile,
    PartKind,
    RctEntry,
    SaveSetPart,
)
from bareos_hyperv.model.backup import ReferencePoint as ReferencePointFacts
from bareos_hyperv.model.cluster import ClusterFacts
from bareos_hyperv.model.disk import DiskFormat
from bareos_hyperv.model.host import HostFacts
from bareos_hyperv.model.vm import Drive, DriveKind, Generation, VmConfig
from bareos_hyperv.protocol.messages import CleanupRecord, FileEntry
from bareos_hyperv.storage.base import Buffer, FileReader, Storage, StorageNotFound, remove_tree
from bareos_hyperv.storage.delta import DeltaReader, HashingReader
from bareos_hyperv.storage.locations import Location, LocationResolver
from bareos_hyperv.wsman.cim import CimInstance
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import NotFoundFault, WsmanConnectionError

log = logging.getLogger("bareos_hyperv.backup.hyperv")

TRAILER_FILE = "SHA256SUMS"
STAGING_DIR = "bareos-hyperv-staging"
FILE_MODE = stat_mod.S_IFREG | 0o640
# After CreateSnapshot's answer was lost: how long (seconds) to watch for the checkpoint its job
# may still make, and how often to look.
ORPHAN_WAIT = 15.0
ORPHAN_POLL = 0.5
_MB = 1024 * 1024
# The configuration files a configuration-only export writes (hyperv-wmi.md; .vmgs for generation 2).
_CONFIG_EXTENSIONS = ("vmcx", "vmrs", "vmgs")


class MemoryReader:
    """A generated item (manifest, digests) read like a file (:class:`FileReader`)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self._size = len(data)

    @property
    def size(self) -> int:
        """Length of the content."""
        return self._size

    def readinto(self, buf: Buffer) -> int:
        """Fill ``buf`` from the current position."""
        return self._data.readinto(buf)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all when negative)."""
        return self._data.read(size)

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset`` without moving the position."""
        return bytes(self._data.getbuffer()[offset : offset + length])

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the position."""
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        """The position."""
        return self._data.tell()

    def close(self) -> None:
        """Release the buffer."""
        self._data.close()

    def __enter__(self) -> MemoryReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _Item:
    """One listed item of the current VM and where its bytes come from."""

    entry: FileEntry
    relative: str  # path inside the VM's directory (manifest.xml, config/x, disks/n-x[+I+job])
    location: Optional[Location] = None
    content: Optional[bytes] = None
    opened: float = 0.0  # monotonic time the core started reading it
    disk: Optional[_DiskItem] = None  # a disk file's full copy or delta


@dataclass
class _DiskItem:
    """A disk file the job saves: which file, how (:class:`FilePlan`), and what it was based on."""

    file: DiskFile
    host_path: str
    plan: FilePlan
    base: Optional[DiskBase] = None
    stream: Optional[DeltaReader] = None  # a sparse full's stream: its image digests once it ended


@dataclass
class _VmRun:
    """State of the VM being backed up (so that cleanup knows what exists)."""

    summary: vmops.VmSummary
    node: str
    directory: str  # @hyperv/<scope>/<vm-dir>
    items: Dict[str, _Item] = field(default_factory=dict)
    digests: Dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    checkpoint: Optional[Checkpoint] = None
    manager: Optional[CheckpointManager] = None
    staging: Optional[str] = None  # host path
    staging_location: Optional[Location] = None
    started: float = field(default_factory=time.monotonic)
    bytes: int = 0
    trailer_listed: bool = False
    manifest: Optional[Manifest] = None  # as streamed first (no digests yet)
    disk_sources: Dict[str, str] = field(default_factory=dict)  # relative disks/<n>-<file> -> host path
    base: Optional[VmBase] = None  # the VM in the job this incremental or differential builds on

    def record(self, host: str, job_id: int) -> Optional[CleanupRecord]:
        """What exists on the Hyper-V side for this VM right now (None: nothing to undo)."""
        if self.checkpoint is None and self.staging_location is None:
            return None
        return CleanupRecord(host=host, node=self.node, vm_guid=self.summary.ref.guid, vm_name=self.summary.ref.name,
                             job_id=job_id, checkpoint_id=self.checkpoint.instance_id if self.checkpoint else "",
                             staging=(self.staging or "") if self.staging_location is not None else "")


class HyperVBackupSource:
    """The ``hyperv`` backup source (see module docstring)."""

    def __init__(self, ctx: SourceContext) -> None:
        opts = ctx.options.backup
        self.job_id = ctx.job_id
        if opts is None or not opts.host or not opts.vms:
            raise ConfigurationError("source=hyperv needs host= and vm=",
                                     what_to_do="name the Hyper-V host or cluster in host= and the VMs in vm=")
        self.entry = opts.host
        self.wanted = list(opts.vms)  # split by the fd (model.options.split_names)
        self.excluded = list(opts.exclude)
        self.consistency = ConsistencyOption(opts.consistency.value)
        # Level and base come from Bareos (bVarLevel, bVarSinceTime, the previous job's restore
        # objects), never from a file on the fd host (reference §3.2, §12).
        self.level = BackupLevel.from_bareos(ctx.level or "F")
        self.since = ctx.since
        self._ctx = ctx
        self.previous = PreviousBackup()
        self.timeout = float(ctx.options.timeout)
        self.staging_root = opts.staging_path
        # The job's connections (agent/connections.py builds them from the typed options); closed in close().
        connections = ctx.connections()
        self.connector: Connector = connections.connector
        self.resolver: LocationResolver = connections.resolver
        self.storage: Storage = connections.storage
        self._queue: Optional[List[vmops.VmSummary]] = None
        self._dirs: Dict[str, str] = {}
        self._scope = ""
        self._cluster: Optional[ClusterFacts] = None
        self._hosts: Dict[str, HostFacts] = {}
        self._current: Optional[_VmRun] = None
        self._left: Optional[CleanupRecord] = None  # what an abort could not undo

    # ------------------------------------------------------------------ Source

    def list_files(self) -> List[FileEntry]:
        """Next batch: a VM's items, then its digests; [] when every VM is done."""
        if self._queue is None:
            self._resolve()
        run = self._current
        if run is not None:
            if not run.trailer_listed:
                return self._finish(run)
            self._current = None
        assert self._queue is not None  # set by _resolve
        if not self._queue:
            return []
        summary = self._queue.pop(0)
        run = self._prepare(summary)
        return [item.entry for item in run.items.values()]

    def open(self, entry: FileEntry) -> FileReader:
        """A reader for one listed item of the current VM."""
        run = self._current
        item = run.items.get(entry.name) if run is not None else None
        if run is None or item is None:
            raise StorageError(f"{entry.name} is not an item of the VM being backed up",
                               what_to_do="report this as a bug with the job log")
        if item.content is not None:
            return MemoryReader(item.content)
        assert item.location is not None  # items have content or a location
        if item.relative.startswith(DISKS_DIR + "/"):
            log.info("%s: saving disk %s (%.1f MB)", run.summary.ref.name, item.relative, entry.size / _MB)
        item.opened = time.monotonic()
        reader = self.storage.open_read(item.location)
        disk = item.disk
        if disk is None:
            return reader
        plan = disk.plan
        if plan.sparse:
            # Only the referenced ranges, through the reader's own pipelined stream (seek + read
            # ahead up to each range's end); the image digests are computed on the way.
            assert plan.header is not None
            disk.stream = DeltaReader(plan.header, plan.ranges, name=item.relative, close=reader.close,
                                      source=reader)
            return disk.stream
        if plan.method is None:
            assert plan.hasher is not None  # a full copy's digests come from the read itself
            return HashingReader(reader, plan.hasher)
        assert plan.header is not None
        return DeltaReader(plan.header, plan.ranges, reader.read_at, name=item.relative, close=reader.close)

    def file_done(self, entry: FileEntry, size: int, sha256: str) -> None:
        """Record the digest of a saved item; report disk throughput."""
        run = self._current
        if run is None:
            return
        item = run.items.get(entry.name)
        if item is None:
            return
        run.digests[item.relative] = sha256
        run.bytes += size
        if item.relative.startswith(DISKS_DIR + "/"):
            seconds = max(time.monotonic() - item.opened, 1e-6)
            log.info("%s: saved %s, %.1f MB in %.1f s (%.1f MB/s)", run.summary.ref.name, item.relative,
                     size / _MB, seconds, size / _MB / seconds)
            disk = item.disk
            if disk is not None and disk.plan.method is None:
                read = disk.stream.bytes_read if disk.stream is not None else size
                log.info("%s: %s: %.1f MB read of a %.1f MB file, virtual size %.1f MB%s", run.summary.ref.name,
                         PureWindowsPath(disk.host_path).name, read / _MB, disk.plan.size / _MB,
                         disk.file.info.virtual_size / _MB,
                         " (sparse full: only the ranges the disk's tables reference)" if disk.plan.sparse else "")

    def pending_cleanup(self) -> Optional[CleanupRecord]:
        """What must be undone on the Hyper-V side if the job ended now (None: nothing)."""
        run = self._current
        if run is not None and not run.trailer_listed:
            record = run.record(self.entry, self.job_id)
            if record is not None:
                return record
        return self._left

    def close(self) -> None:
        """End of job: undo an unfinished VM (checkpoint, staging), then disconnect."""
        run, self._current = self._current, None
        try:
            if run is not None and not run.trailer_listed:
                self._abort(run)
        finally:
            try:
                self.storage.close()
            finally:
                self.connector.close()

    # ------------------------------------------------------------------ estimate

    def estimate(self) -> List[FileEntry]:
        """bconsole ``estimate``: the items each selected VM would produce, read from the inventory alone.

        Nothing changes on any host: no stale-checkpoint sweep, no checkpoint, no export, no staging
        folder, no reference-point record.  Sizes are those of now: every file of each disk's chain
        (a checkpoint would freeze exactly these), the VM's own configuration files (a configuration
        export copies them), the manifest as it would be written, and SHA256SUMS.  A Bareos estimate
        gets no restore objects (dird ua_cmds.cc EstimateCmd sends none), so at Incremental or
        Differential the deltas cannot be known: each disk file counts at its full size, an upper bound.
        """
        self._resolve(previous=False)
        if self.level is not BackupLevel.FULL:
            log.info("estimate of a %s backup: the changes since the base job are not known to an estimate, "
                     "so every disk file counts at its full size (an upper bound)", self.level.value)
        assert self._queue is not None  # set by _resolve
        queue, self._queue = self._queue, []
        out: List[FileEntry] = []
        for summary in queue:
            try:
                vm = self._locate(summary)
            except NotFoundFault:
                vm = self._locate(summary)  # migrated between the owner lookup and the listing
            out.extend(self._estimate_vm(vm))
        return out

    def _estimate_vm(self, vm: vmops.VmSummary) -> List[FileEntry]:
        """One VM's items as a Full backup would name them, with today's sizes (read-only)."""
        node = vm.node.upper()
        client = self.connector.client(node)
        host = self._host(node)
        settings = vmops.read_settings(client, vm)
        config = vmops.normalise(vm, settings, host.switches)
        images = ImageService(HostServices(client, node), timeout=self.timeout)
        disks, files = self._disks(config, images, None)
        vm_dir = self._dirs.get(vm.ref.guid, escape_component(vm.ref.name))
        directory = f"{ROOT}/{escape_component(self._scope)}/{vm_dir}"
        now = int(time.time())
        sized: List[tuple[str, int]] = []
        for disk_file, host_path in files:
            st = self.storage.stat(self.resolver.resolve(host_path, node))
            sized.append((f"{DISKS_DIR}/{disk_file.index}-{escape_component(PureWindowsPath(host_path).name)}",
                          st.size))
        config_files = self._estimate_config_files(config, node)
        manifest = Manifest(
            backup=BackupFacts(level=BackupLevel.FULL, job_id=max(self.job_id, 1),  # the schema wants a JobId
                               time=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0),
                               consistency_requested=ConsistencyMode(self.consistency.value),
                               consistency_achieved=Consistency.APPLICATION, plugin_version=__version__,
                               next_file_index=max([f.index + 1 for d in disks for f in d.chain] + [0])),
            vm=config, host=host,
            settings=VmSettings(system=_captured(settings.system), resources=[_captured(d) for d in settings.devices]),
            controllers=[Controller(kind, index, sid) for sid, (kind, index)
                         in vmops.controller_slots(settings.devices).items()],
            disks=disks, cluster=self._cluster)
        items = [(MANIFEST_FILE, len(to_xml(manifest))), *config_files, *sized]
        # SHA256SUMS: one "<64 hex>  <relative>" line per file a restore to a directory leaves.
        trailer = sum(64 + 2 + len(rel.encode("utf-8")) + 1 for rel, _size in items)
        items.append((TRAILER_FILE, trailer))
        log.info("%s: %d item(s), %.1f MB would be saved (estimate; nothing was changed on %s)", vm.ref.name,
                 len(items), sum(size for _rel, size in items) / _MB, node)
        return [FileEntry(name=f"{directory}/{rel}", size=size, mtime=now, mode=FILE_MODE) for rel, size in items]

    def _estimate_config_files(self, config: VmConfig, node: str) -> List[tuple[str, int]]:
        """The files a configuration-only export writes (``<GUID>.vmcx``, ``.vmrs``, and ``.vmgs`` for
        generation 2), sized as the VM's own files in its configuration folder are now (0 for one that
        cannot be found there)."""
        folder = str(PureWindowsPath(config.config_root) / "Virtual Machines")
        found: Dict[str, tuple[str, int]] = {}
        try:
            for entry in self.storage.listdir(self.resolver.resolve(folder, node)):
                stem, _dot, ext = entry.name.rpartition(".")
                if not entry.is_dir and stem.upper() == config.ref.guid.upper():
                    found[ext.lower()] = (entry.name, entry.size)
        except (StorageError, StorageNotFound) as exc:
            log.warning("%s: the configuration files in %s cannot be listed (%s); the estimate counts them "
                        "as empty", config.ref.name, folder, exc)
        stem = found["vmcx"][0].rpartition(".")[0] if "vmcx" in found else config.ref.guid
        wanted = _CONFIG_EXTENSIONS if config.generation is Generation.GEN2 else _CONFIG_EXTENSIONS[:2]
        out = [(f"{CONFIG_DIR}/{escape_component(found.get(ext, (f'{stem}.{ext}', 0))[0])}",
                found.get(ext, ("", 0))[1]) for ext in wanted]
        return sorted(out)

    # ------------------------------------------------------------------ resolution

    def _load_previous(self) -> None:
        """Sort the previous job's records (all of them arrived by the first ListFiles)."""
        if self.level is BackupLevel.FULL:
            return
        self.previous = previous_backup(self._ctx.base_objects)
        for problem in self.previous.problems:
            log.warning("a record of the previous backup cannot be used: %s", problem)
        if self.previous.job_id is None:
            log.warning("%s backup without any record of an earlier backup from Bareos: every disk is "
                        "copied in full", self.level.value)
        else:
            log.info("%s backup based on job %d (%d VM(s) in its records)", self.level.value,
                     self.previous.job_id, len(self.previous.vms))

    def _resolve(self, *, previous: bool = True) -> None:
        """Find the VMs the FileSet names (one inventory of the host or cluster)."""
        if previous:
            self._load_previous()
        client = self.connector.client(self.entry)
        cluster = clusterops.cluster_of(client)
        found: List[vmops.VmSummary] = []
        if cluster is None:
            self._scope = self.entry.upper()
            nodes = [self.entry]
        else:
            self._cluster = clusterops.cluster_facts(client, cluster)
            self._scope = self._cluster.name
            nodes = [n.name for n in self._cluster.nodes if n.state in (0, 2)]
        for node in nodes:
            found.extend(vmops.list_vms(self.connector.client(node)))
        selected = vmops.select_vms(found, self.wanted, self.excluded, where=self._scope)
        self._dirs = vm_directories([v.ref for v in found])
        self._queue = list(selected)
        log.info("%d VM(s) to back up from %s: %s", len(selected), self._scope,
                 ", ".join(v.ref.name for v in selected))

    def _locate(self, summary: vmops.VmSummary) -> vmops.VmSummary:
        """The VM as its owner node sees it now (it may have live-migrated since the inventory)."""
        node = summary.node
        if self._cluster is not None:
            owner = clusterops.owner_node(self.connector.client(self.entry), summary.ref.guid)
            node = owner or node
        for candidate in vmops.list_vms(self.connector.client(node)):
            if candidate.ref.guid == summary.ref.guid:
                if candidate.node.upper() != summary.node.upper():
                    log.info("%s is now on %s", summary.ref.name, candidate.node)
                return candidate
        raise HyperVError("the VM is no longer registered on its host",
                          context={"vm": str(summary.ref), "host": node},
                          what_to_do="check whether the VM was deleted or moved out of the cluster")

    def _host(self, node: str) -> HostFacts:
        key = node.upper()
        if key not in self._hosts:
            self._hosts[key] = host_facts(self.connector.client(node), name=key)
        return self._hosts[key]

    # ------------------------------------------------------------------ one VM

    def _prepare(self, summary: vmops.VmSummary) -> _VmRun:
        """Capture, checkpoint, export and list one VM's items (cleaned up on any failure)."""
        try:
            vm = self._locate(summary)
        except NotFoundFault:
            vm = self._locate(summary)  # migrated between the owner lookup and the listing: once more
        vm_dir = self._dirs.get(vm.ref.guid, escape_component(vm.ref.name))
        directory = f"{ROOT}/{escape_component(self._scope)}/{vm_dir}"
        run = _VmRun(summary=vm, node=vm.node.upper(), directory=directory)
        self._current = run
        try:
            self._capture_and_checkpoint(run)
        except BaseException:
            self._current = None
            self._abort(run)
            raise
        return run

    def _capture_and_checkpoint(self, run: _VmRun) -> None:
        vm = run.summary
        client = self.connector.client(run.node)
        services = HostServices(client, run.node)
        manager = CheckpointManager(services, timeout=self.timeout)
        run.manager = manager
        removed = manager.remove_stale(vm.epr)
        for name in removed:
            log.warning("%s: removed the recovery checkpoint '%s' that an interrupted earlier job left",
                        vm.ref.name, name)
        # Deleting a checkpoint (the sweep above, or an earlier job's reference point) starts a merge
        # that outlives its job: the chain's files change until it ends (hyperv-wmi.md 4.3).
        vmops.wait_for_merges(client, vm, timeout=self.timeout)
        host = self._host(run.node)
        settings = vmops.read_settings(client, vm)
        config = vmops.normalise(vm, settings, host.switches)
        images = ImageService(services, timeout=self.timeout)
        if self.level is not BackupLevel.FULL:
            run.base = self.previous.vm(vm.ref.guid)
            if run.base is None and self.previous.job_id is not None:
                log.warning("%s: job %d did not back this VM up: every disk of it is copied in full", vm.ref.name,
                            self.previous.job_id)

        before = self._recovery_ids(client, vm)
        try:
            run.checkpoint = manager.create(vm.epr, vm.ref.guid, vm.state, self.consistency, self.job_id)
        except WsmanConnectionError:
            # The host may have carried the call out although its answer was lost; its job then
            # makes the checkpoint a little later: watch for it for a while.
            self._remove_new_checkpoints(client, manager, vm, before, wait=ORPHAN_WAIT)
            raise
        except BaseException as exc:
            # Failed or interrupted after the checkpoint was made (e.g. while naming it): a
            # recovery checkpoint that was not there before is this job's, named or not.
            self._remove_new_checkpoints(client, manager, vm, before)
            _legacy_checkpoint_refused(exc, vm, run.node, config.version)
            raise
        for warning in run.checkpoint.warnings:
            log.warning("%s: %s", vm.ref.name, warning)
        log.info("%s: %s checkpoint taken on %s", vm.ref.name, run.checkpoint.achieved.value, run.node)
        # The files to save are those the checkpoint itself froze (its own disk settings), not
        # the live chain read before it: nothing in that list can vanish under a read.
        disks, files = self._disks(config, images, run.base, frozen=run.checkpoint.frozen_by_device)

        run.staging = self._staging_path(config)
        run.staging_location = self.resolver.resolve(run.staging, run.node)
        backup_intent = export_configuration(services, vm.epr, run.checkpoint.epr, run.staging,
                                             timeout=self.timeout)
        config_items = self._config_items(run)

        manifest = Manifest(
            backup=BackupFacts(
                level=self.level,
                job_id=self.job_id,
                time=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0),
                consistency_requested=ConsistencyMode(self.consistency.value),
                consistency_achieved=_ACHIEVED[run.checkpoint.achieved],
                consistency_source=CONSISTENCY_FROM_JOB,
                plugin_version=__version__,
                checkpoint_id=run.checkpoint.instance_id,
                no_reference_point=_no_reference_point(config.version),
                export_backup_intent=backup_intent,
                warnings=list(run.checkpoint.warnings),
                base_job_id=None if run.base is None else run.base.manifest.backup.job_id,
                next_file_index=max([f.index + 1 for d in disks for f in d.chain]
                                    + [run.base.manifest.backup.next_file_index or 0 if run.base else 0]),
                since=_dt.datetime.fromtimestamp(self.since, _dt.timezone.utc) if self.since and run.base else None,
            ),
            vm=config,
            host=host,
            settings=VmSettings(
                system=_captured(settings.system),
                resources=[_captured(d) for d in settings.devices],
            ),
            controllers=[Controller(kind, index, sid) for sid, (kind, index)
                         in vmops.controller_slots(settings.devices).items()],
            disks=disks,
            cluster=self._cluster,
        )
        run.manifest = manifest
        data = to_xml(manifest)
        now = int(time.time())
        self._add(run, MANIFEST_FILE, FileEntry(name="", size=len(data), mtime=now, mode=FILE_MODE), content=data)
        for relative, location, size, mtime in config_items:
            self._add(run, relative, FileEntry(name="", size=size, mtime=mtime, mode=FILE_MODE), location=location)
        self._plan_disks(run, config, disks, files, images=images, manager=manager)
        self._chain_in_manifest_file(run)

    def _chain_in_manifest_file(self, run: _VmRun) -> None:
        """``manifest.xml`` gives every disk file's size, and per file saved as a delta the chain that rebuilds it.

        Each file was measured when its copy was planned (the checkpoint froze it), so the
        manifest in the save set records the true size of every file.  A full copy's SHA-256 is
        known only after its transfer: the manifest says it is in ``SHA256SUMS``.  A delta's
        result is known before the list is returned, so the manifest can say which image each
        such file must end at: a restore to a directory checks that no final delta is missing.
        """
        assert run.manifest is not None
        planned = {i.disk.file.index: i for i in run.items.values() if i.disk is not None}
        by_index = {index: i for index, i in planned.items() if i.disk is not None
                    and i.disk.plan.method is not None and i.disk.plan.result is not None}
        disks = []
        for disk_backup in run.manifest.disks:
            chain = []
            for f in disk_backup.chain:
                item = by_index.get(f.index)
                if item is None or item.disk is None or item.disk.plan.result is None:
                    full = planned.get(f.index)
                    if full is not None and full.disk is not None:
                        chain.append(dataclasses.replace(f, file_size=full.disk.plan.size, sha256_in=TRAILER_FILE))
                    else:
                        chain.append(f)
                    continue
                plan = item.disk.plan
                assert plan.result is not None
                chain.append(dataclasses.replace(f, file_size=plan.size, sha256=plan.sha256,
                                                 image_digest=plan.result.digest(), chunk_size=plan.chunk_size,
                                                 chain=_chain_of(item, self.job_id)))
            disks.append(dataclasses.replace(disk_backup, chain=chain))
        data = to_xml(dataclasses.replace(run.manifest, disks=disks))
        item = run.items[f"{run.directory}/{MANIFEST_FILE}"]
        entry = dataclasses.replace(item.entry, size=len(data))
        run.items[entry.name] = dataclasses.replace(item, entry=entry, content=data)

    def _plan_disks(self, run: _VmRun, config: VmConfig, disks: List[DiskBackup],
                    files: List[tuple[DiskFile, str]], *, images: ImageService, manager: CheckpointManager) -> None:
        """Decide for every disk file whether it is copied in full or as a delta, and list it.

        Each decision is logged with its reason (``backup.incremental``).  Change tracking is
        asked only for the file each drive writes to (the first of its chain), only when the
        base job's reference point still exists and recorded an RCT id for the drive.
        """
        vm = run.summary
        no_rct = self._rct_unavailable(run, config, manager)
        ids = rct_ids(run.base.manifest) if run.base is not None else {}
        leaves = {d.chain[0].index: d.settings_id for d in disks if d.chain}
        drives = {d.settings_id: d for d in config.drives}
        mtime = int(time.time())
        for disk_file, host_path in files:
            location = self.resolver.resolve(host_path, run.node)
            file_name = escape_component(PureWindowsPath(host_path).name)
            base = run.base.base_for(host_path) if run.base is not None else None
            why_full = ""
            if run.base is not None and base is None:
                why_full = (f"no base for it in job {run.base.manifest.backup.job_id} (a disk added since, or its "
                            "record could not be saved)")
            rct = None
            reason = no_rct
            info = disk_file.info
            if base is not None and not reason:
                settings_id = leaves.get(disk_file.index)
                rct_id = _rct_id_of(ids, drives.get(settings_id or "")) if settings_id else None
                if settings_id is None:
                    reason = "it is a parent in the disk's checkpoint chain (change tracking covers the file in use)"
                elif info.format is not DiskFormat.VHDX:
                    reason = "VHD files have no resilient change tracking"
                elif not rct_id:
                    reason = "the reference point of the base job has no change tracking id for this disk"
                else:
                    path, limit, size = info.path, rct_id, info.virtual_size
                    rct = functools.partial(images.changed_ranges, path, limit, size)
            plan = plan_file(self.storage, location, PureWindowsPath(host_path).name, job_id=self.job_id, base=base,
                             rct=rct, no_rct_reason=reason, virtual_size=info.virtual_size, why_full=why_full,
                             tick=self._ctx.heartbeat)
            if plan.method is None:
                relative = f"{DISKS_DIR}/{disk_file.index}-{file_name}{SPARSE_MARKER if plan.sparse else ''}"
                if run.base is not None:
                    log.warning("%s: %s is copied in full: %s", vm.ref.name, relative, plan.reason)
                if plan.sparse:
                    log.info("%s: %s is saved as a sparse full: %.1f MB of the %.1f MB file are referenced by its "
                             "tables (virtual size %.1f MB); the rest is not read and restores as zeros",
                             vm.ref.name, PureWindowsPath(host_path).name,
                             sum(n for _o, n in plan.ranges) / _MB, plan.size / _MB, info.virtual_size / _MB)
            else:
                relative = f"{DISKS_DIR}/{disk_file.index}-{file_name}{DELTA_MARKER}{self.job_id}"
                say = log.info if plan.method in (DeltaMethod.RCT, DeltaMethod.UNCHANGED) else log.warning
                if plan.method is DeltaMethod.HASH and reason == "VHD files have no resilient change tracking":
                    say = log.info  # expected every time: not worth a warning
                what = {DeltaMethod.RCT: "changes from change tracking", DeltaMethod.HASH: "changed chunks by digest",
                        DeltaMethod.UNCHANGED: "no changes"}[plan.method]
                say("%s: %s: %s (%s); delta of %.1f MB against job %d, %.1f MB read", vm.ref.name,
                    PureWindowsPath(host_path).name, what, plan.reason, plan.item_size / _MB,
                    plan.header.base_job_id if plan.header else 0, plan.bytes_read / _MB)
            run.disk_sources[relative] = host_path
            self._add(run, relative, FileEntry(name="", size=plan.item_size, mtime=mtime, mode=FILE_MODE),
                      location=location, disk=_DiskItem(disk_file, host_path, plan, base))

    def _rct_unavailable(self, run: _VmRun, config: VmConfig, manager: CheckpointManager) -> str:
        """Why no disk of the VM can use change tracking this time ("" when it can be asked)."""
        if run.base is None:
            return "no base"
        base_job = run.base.manifest.backup.job_id
        point = run.base.manifest.backup.reference_point
        if not _config_has_rct(config.version):
            # checked first: it is why the base job left no reference point either
            return (f"configuration version {config.version} has no resilient change tracking nor reference "
                    "points (they need 6.2 or later: Update-VMVersion)")
        if point is None:
            why = run.base.manifest.backup.no_reference_point
            return f"job {base_job} left no reference point" + (f" ({why})" if why else "")
        present = {r.str("InstanceID").lower() for r in manager.reference_points(run.summary.epr)}
        if point.instance_id.lower() not in present:
            return (f"the reference point of job {base_job} is gone (removed on the host, or the VM was restored "
                    "or moved to a host that reset change tracking)")
        return ""

    @staticmethod
    def _recovery_checkpoints(client: CimClient, vm: vmops.VmSummary) -> List[CimInstance]:
        snaps = client.associators(vm.epr, assoc_class=C.SNAPSHOT_OF_VS, result_class=C.VSSD)
        return [s for s in snaps if s.opt_str("VirtualSystemType") == C.VirtualSystemType.SNAPSHOT_RECOVERY]

    def _recovery_ids(self, client: CimClient, vm: vmops.VmSummary) -> set[str]:
        return {s.str("InstanceID").lower() for s in self._recovery_checkpoints(client, vm)}

    def _remove_new_checkpoints(self, client: CimClient, manager: CheckpointManager, vm: vmops.VmSummary,
                                before: set[str], *, wait: float = 0.0) -> None:
        """Destroy recovery checkpoints that appeared during a failed create (best effort).

        With ``wait``, look again until one appears or ``wait`` seconds have passed.
        """
        deadline = time.monotonic() + wait
        try:
            while True:
                found = [s for s in self._recovery_checkpoints(client, vm)
                         if s.str("InstanceID").lower() not in before and s.epr is not None]
                for snap in found:
                    assert snap.epr is not None
                    manager.destroy(snap.epr)
                    log.warning("%s: removed the recovery checkpoint %s that the failed attempt created",
                                vm.ref.name, snap.str("InstanceID"))
                if found or time.monotonic() >= deadline:
                    return
                time.sleep(ORPHAN_POLL)
        except BareosHyperVError as exc:
            log.error("%s: could not check for a recovery checkpoint left by the failed attempt: %s; the "
                      "next job of this plugin removes it once named, or delete it on the host", vm.ref.name, exc)

    def _disks(self, config: VmConfig, images: ImageService, base: Optional[VmBase], *,
               frozen: Optional[Mapping[str, str]] = None) -> tuple[List[DiskBackup], List[tuple[DiskFile, str]]]:
        """Each drive's chain (leaf first) and the files to save; skipped drives say why.

        With ``frozen`` (device key -> file, :attr:`Checkpoint.frozen_by_device`) each drive's chain
        starts at the file the checkpoint froze for it, which is the file the drive used when the
        checkpoint was taken; without it (an estimate) at the drive's file now.  A file keeps the
        number ``<n>`` it had in the base job (matched by host path), so that its deltas carry the
        name of its full copy; files new since then get numbers above all the base job used.
        """
        disks: List[DiskBackup] = []
        files: List[tuple[DiskFile, str]] = []
        known: Dict[str, int] = {}
        index = 0
        if base is not None:
            for disk in base.manifest.disks:
                for f in disk.chain:
                    known.setdefault(f.info.path.lower(), f.index)
                    index = max(index, f.index + 1)
            index = max(index, base.manifest.backup.next_file_index or 0)
        for drive in config.drives:
            if drive.kind is DriveKind.VIRTUAL_DISK and drive.path:
                chain = []
                # A stale parent path in a child is searched where the child's header says (backup.chains).
                find_parent = parent_finder(self.storage, self.resolver, images.services.node)
                for info in images.chain(self._frozen_path(config, drive, frozen), find_parent=find_parent):
                    number = known.get(info.path.lower())
                    if number is None or any(f.index == number for f, _p in files):
                        number, index = index, index + 1
                    disk_file = DiskFile(index=number, info=info, file_size=0)
                    chain.append(disk_file)
                    files.append((disk_file, info.path))
                disks.append(DiskBackup(settings_id=drive.settings_id, chain=chain))
            elif drive.kind in (DriveKind.PASS_THROUGH, DriveKind.SHARED_DISK):
                reason = ("pass-through disks are host disks that checkpoints cannot capture"
                          if drive.kind is DriveKind.PASS_THROUGH
                          else "VHD Set (shared) disks are not supported yet")
                disks.append(DiskBackup(settings_id=drive.settings_id, not_backed_up=reason))
                log.warning("%s: the %s disk at %s is not backed up: %s", config.ref.name,
                            "pass-through" if drive.kind is DriveKind.PASS_THROUGH else "shared",
                            drive.slot, reason)
        return disks, files

    @staticmethod
    def _frozen_path(config: VmConfig, drive: Drive, frozen: Optional[Mapping[str, str]]) -> str:
        """The file the checkpoint froze for a drive (its own disk settings), else the drive's file."""
        assert drive.path is not None
        if frozen is None:
            return drive.path
        path = frozen.get(device_key(drive.settings_id))
        if path is None and any(p.lower() == drive.path.lower() for p in frozen.values()):
            # the checkpoint's settings ids do not carry the live device part (not seen, but not
            # documented either): the file the drive used is the one the checkpoint froze
            path = drive.path
        if path is None:
            raise HyperVError("the checkpoint has no virtual hard disk for a drive of the VM",
                              context={"vm": str(config.ref), "drive": str(drive.slot), "file": drive.path},
                              what_to_do="check whether a disk was added or removed during the backup and run "
                              "the job again")
        if path.lower() != drive.path.lower():
            # the drive's file changed between reading the settings and the checkpoint (a merge
            # ended, an operator edited the VM): what the checkpoint froze is what is consistent
            log.info("%s: the checkpoint froze %s for drive %s (the settings read before named %s)",
                     config.ref.name, path, drive.slot, drive.path)
        return path

    def _staging_path(self, config: VmConfig) -> str:
        base = self.staging_root or str(PureWindowsPath(config.config_root or config.snapshot_root) / STAGING_DIR)
        return str(PureWindowsPath(base) / f"job{self.job_id}-{config.ref.guid}")

    def _config_items(self, run: _VmRun) -> List[tuple[str, Location, int, int]]:
        """The exported configuration files, found in the staging folder over SMB (or locally).

        Whatever shape the export has is saved: the files of ``Virtual Machines`` as
        ``config/<file>``, and the files of its folders as ``config/<folder>/.../<file>`` (a VM of
        configuration version 5.0 exports ``<GUID>.xml`` plus a ``<GUID>`` folder for its runtime
        state, ``hyperv-wmi.md`` §3.3).
        """
        assert run.staging is not None and run.staging_location is not None
        out: List[tuple[str, Location, int, int]] = []
        pending = [(PureWindowsPath(run.staging) / "Virtual Machines", CONFIG_DIR)]
        while pending:
            host_folder, relative = pending.pop(0)
            for entry in sorted(self.storage.listdir(self.resolver.resolve(str(host_folder), run.node)),
                                key=lambda e: e.name):
                child = f"{relative}/{escape_component(entry.name)}"
                if entry.is_dir:
                    pending.append((host_folder / entry.name, child))
                    continue
                location = self.resolver.resolve(str(host_folder / entry.name), run.node)
                st = self.storage.stat(location)
                out.append((child, location, st.size, int(st.mtime)))
        if not out:
            raise HyperVError("the configuration export produced no files",
                              context={"vm": str(run.summary.ref), "folder": run.staging},
                              what_to_do="check that the host can write to the staging folder (staging_path=)")
        return out

    def _add(self, run: _VmRun, relative: str, entry: FileEntry, *, location: Optional[Location] = None,
             content: Optional[bytes] = None, disk: Optional[_DiskItem] = None) -> None:
        name = f"{run.directory}/{relative}"
        entry = FileEntry(name=name, size=entry.size, mtime=entry.mtime, mode=entry.mode)
        run.items[name] = _Item(entry=entry, relative=relative, location=location, content=content, disk=disk)

    def _finish(self, run: _VmRun) -> List[FileEntry]:
        """Every item of the VM is saved: keep the checkpoint as a reference point, clean up, list digests."""
        assert run.checkpoint is not None and run.manager is not None
        missing = [i.relative for i in run.items.values() if i.relative not in run.digests]
        if missing:
            raise HyperVError("not every item of the VM reached the storage daemon",
                              context={"vm": str(run.summary.ref), "missing": ", ".join(missing)},
                              what_to_do="look for earlier errors in the job log")
        self._complete_full_copies(run)
        assert run.manifest is not None
        rp: Optional[ReferencePoint] = None
        if run.manifest.backup.no_reference_point:
            self._drop_checkpoint(run, run.manifest.backup.no_reference_point)
        else:
            try:
                rp = run.manager.to_reference_point(run.checkpoint)
            except NotFoundFault:
                # The VM migrated during the backup: its checkpoint now lives on the new owner.
                run.summary = self._locate(run.summary)
                run.node = run.summary.node.upper()
                run.manager = CheckpointManager(HostServices(self.connector.client(run.node), run.node),
                                                timeout=self.timeout)
                rp = run.manager.to_reference_point(run.checkpoint)
            run.checkpoint = None
            self._confirm_consistency(run, rp)
            log.info("%s: checkpoint kept as reference point %s for the next incremental", run.summary.ref.name,
                     rp.instance_id)
            self._replace_reference_points(run, rp)
        if not self._remove_staging(run) and run.staging:
            self._left = CleanupRecord(host=self.entry, node=run.node, vm_guid=run.summary.ref.guid,
                                       vm_name=run.summary.ref.name, job_id=self.job_id, staging=run.staging)
        seconds = max(time.monotonic() - run.started, 1e-6)
        log.info("%s: backed up %d files, %.1f MB in %.1f s (%.1f MB/s)", run.summary.ref.name, len(run.items),
                 run.bytes / _MB, seconds, run.bytes / _MB / seconds)
        data = _trailer(run).encode("utf-8")
        self._add(run, TRAILER_FILE, FileEntry(name="", size=len(data), mtime=int(time.time()), mode=FILE_MODE),
                  content=data)
        run.trailer_listed = True
        out = [run.items[f"{run.directory}/{TRAILER_FILE}"].entry]
        final_manifest = self._final_manifest(run)
        if rp is not None:
            final_manifest = _with_reference_point(final_manifest, rp)
        final = to_xml(final_manifest).decode("utf-8")
        if len(final.encode("utf-8")) > MAX_OBJECT_BYTES:
            log.warning("%s: the manifest (%d bytes) is too large for a Bareos restore object; a restore into "
                        "Hyper-V will not be possible, a restore of the files is, and the next incremental or "
                        "differential copies every disk in full", run.summary.ref.name, len(final))
        else:
            out.append(FileEntry(name=f"{run.directory}/{MANIFEST_OBJECT}", size=len(final), mtime=int(time.time()),
                                 mode=FILE_MODE, restore_object=final))
        out += self._base_objects(run)
        return out

    def _drop_checkpoint(self, run: _VmRun, why: str) -> None:
        """A VM without reference points (configuration version 5.0 or older): remove the checkpoint, say why.

        ``ConvertToReferencePoint`` fails for such a VM (``hvsim.configversion`` has the sources), so it
        is not asked; the checkpoint is deleted (its differencing disks merge back) and the manifest
        records why (``backup/@x:noReferencePoint``).  The next incremental or differential compares
        block digests against this backup's records instead of asking change tracking.
        """
        assert run.checkpoint is not None and run.manager is not None
        try:
            run.manager.destroy(run.checkpoint.epr)
        except NotFoundFault:
            # The VM migrated during the backup: its checkpoint now lives on the new owner.
            run.summary = self._locate(run.summary)
            run.node = run.summary.node.upper()
            run.manager = CheckpointManager(HostServices(self.connector.client(run.node), run.node),
                                            timeout=self.timeout)
            run.manager.destroy(run.checkpoint.epr)
        run.checkpoint = None
        log.warning("%s: the checkpoint was removed, not kept as a reference point: %s; the next incremental or "
                    "differential backup finds the changed blocks by comparing digests (it reads every disk); "
                    "Update-VMVersion %s (with the VM off) enables change tracking", run.summary.ref.name, why,
                    run.summary.ref.name)

    def _confirm_consistency(self, run: _VmRun, rp: ReferencePoint) -> None:
        """Record what the reference point says the checkpoint achieved (its ``ConsistencyLevel``).

        A host may complete an application-consistent request crash-consistent without a word in
        the job (hyperv.checkpoints); the reference point made from the checkpoint tells.  Then
        ``consistency=application`` records crash with a warning, and ``consistency=application-required``
        fails the VM and destroys the reference point (the checkpoint is already gone), so that
        nothing of this job stays on the host and the previous reference point stays the base.
        """
        assert run.manifest is not None and run.manager is not None
        backup = run.manifest.backup
        said = rp.achieved
        name = run.summary.ref.name
        if said is None:
            log.info("%s: the reference point does not say which consistency it has; the manifest keeps what the "
                     "checkpoint's job reported (%s)", name, backup.consistency_achieved.value)
            return
        achieved, warnings = backup.consistency_achieved, list(backup.warnings)
        if said is Achieved.CRASH and achieved is Consistency.APPLICATION:
            if self.consistency is ConsistencyOption.APPLICATION_REQUIRED:
                try:
                    run.manager.destroy_reference_point(rp.epr)
                except BareosHyperVError as exc:
                    self._record_unwanted(run, rp, exc)
                raise HyperVError(
                    "Hyper-V recorded the checkpoint as crash-consistent although the job reported no problem: the "
                    "guest did not make it application-consistent; the data saved is not used and its reference "
                    "point was removed",
                    context={"vm": str(run.summary.ref), "host": run.node, "reference point": rp.instance_id},
                    what_to_do="check the Hyper-V Volume Shadow Copy Requestor (backup integration service) and the "
                    "VSS writers in the guest, or accept a crash-consistent backup with consistency=application")
            achieved = Consistency.CRASH
            warnings.append("Hyper-V recorded the checkpoint as crash-consistent although application consistency "
                            "was asked and the job reported no problem (the guest's VSS did not take part)")
            log.warning("%s: %s", name, warnings[-1])
        # Otherwise what the job reported stands: a point the job warned about stays crash even if
        # the reference point claims more, and a cold copy stays cold.
        run.manifest = dataclasses.replace(run.manifest, backup=dataclasses.replace(
            backup, consistency_achieved=achieved, consistency_source=CONSISTENCY_FROM_REFERENCE_POINT,
            warnings=warnings))

    def _record_unwanted(self, run: _VmRun, rp: ReferencePoint, error: BaseException) -> None:
        """A reference point of a failed VM that could not be destroyed: recorded as this plugin's (never a
        base: its level is not Full), so that the next successful job of the VM removes it."""
        name = run.summary.ref.name
        try:
            folder, ledger, where = self._ledger_location(run)
            entries = self._read_ledger(ledger)
        except BareosHyperVError as exc:
            log.error("%s: could not remove reference point %s (%s) nor record it (%s); remove it on %s", name,
                      rp.instance_id, error, exc, run.node)
            return
        recorded = self._write_ledger(run, folder, ledger, where,
                                      [*entries, _LedgerEntry(rp.instance_id, self.job_id, UNWANTED_LEVEL)])
        log.error("%s: could not remove reference point %s: %s; %s", name, rp.instance_id, error,
                  "the next job of this plugin removes it" if recorded else f"remove it on {run.node}")

    def _complete_full_copies(self, run: _VmRun) -> None:
        """The chunk digests of every full copy, gathered while the core read it."""
        for item in run.items.values():
            plan = item.disk.plan if item.disk is not None else None
            if plan is None or plan.method is not None or plan.result is not None:
                continue
            assert item.disk is not None
            stream = item.disk.stream
            if plan.sparse:
                if stream is None or stream.result is None:
                    raise HyperVError(f"{item.relative} was not streamed to its end",
                                      context={"vm": str(run.summary.ref)},
                                      what_to_do="look for earlier errors in the job log")
                # The image a restore rebuilds: zeros where the file was not read.
                plan.result, plan.sha256 = stream.result, stream.sha256
                continue
            assert plan.hasher is not None
            plan.result = plan.hasher.finish()
            plan.sha256 = run.digests[item.relative]
            if plan.result.size != plan.size:
                raise HyperVError(f"{item.relative} was saved with {plan.result.size} bytes, but the file has "
                                  f"{plan.size}", context={"vm": str(run.summary.ref)},
                                  what_to_do="make sure nothing writes to the file during the backup and run the "
                                             "job again")

    def _base_objects(self, run: _VmRun) -> List[FileEntry]:
        """One restore object per disk file: its image as this job leaves it, for the next job."""
        out = []
        now = int(time.time())
        for item in sorted(run.items.values(), key=lambda i: i.relative):
            disk = item.disk
            if disk is None:
                continue
            plan, info = disk.plan, disk.file.info
            assert plan.result is not None
            record = DiskBase(
                vm_guid=run.summary.ref.guid, index=disk.file.index, path=disk.host_path,
                disk_format="VHDX" if info.format is DiskFormat.VHDX else "VHD", disk_id=info.disk_id,
                virtual_size=info.virtual_size, block_size=info.block_size, job_id=self.job_id,
                hashes=plan.result, sha256=plan.sha256, chain=list(_chain_of(item, self.job_id)),
                bat_offset=plan.bat_offset, bat=plan.bat, zeros=plan.zeros)
            text = record.to_text()
            if len(text) > MAX_OBJECT_BYTES:
                log.warning("%s: the record of %s (%d bytes) is too large for a Bareos restore object; the next "
                            "incremental or differential copies this file in full", run.summary.ref.name,
                            item.relative, len(text))
                continue
            out.append(FileEntry(name=base_object_name(run.directory, disk.file.index), size=len(text), mtime=now,
                                 mode=FILE_MODE, restore_object=text))
        return out

    # ------------------------------------------------------------------ this plugin's reference points

    def _replace_reference_points(self, run: _VmRun, rp: ReferencePoint) -> None:
        """This job's reference point replaces the ones this plugin made earlier for the VM (best effort).

        Hyper-V cannot tell who made a reference point (no name a caller sets, no creation time,
        no link to the checkpoint it came from: ``hyperv-wmi.md`` §4.3), so the plugin keeps its
        own record on the host, next to the VM: the InstanceID of every reference point it made,
        in ``<staging_path or the VM's folder>\\bareos-hyperv-state\\<VM GUID>.reference-points``
        (:func:`_ledger_text`).  Only reference points recorded there are ever destroyed; any
        other is another product's, or one whose record was lost, and is left alone.  Only a
        successful VM gets here, so a failed job keeps the previous reference point for the next
        incremental.  Nothing here fails the job: the data is saved, and what could not be
        removed stays recorded so that the next job retries.
        """
        name = run.summary.ref.name
        assert run.manager is not None and run.manifest is not None
        new = _LedgerEntry(rp.instance_id, self.job_id, run.manifest.backup.level.value)
        try:
            folder, ledger, where = self._ledger_location(run)
            entries = self._read_ledger(ledger)
        except BareosHyperVError as exc:
            log.warning("%s: this plugin's record of its reference points cannot be read (%s); older reference "
                        "points are kept, and %s is not recorded, so later jobs will not remove it", name, exc,
                        rp.instance_id)
            return
        entries = [e for e in entries if e.instance_id.lower() != rp.instance_id.lower()]
        # Recorded before anything is destroyed: should the rest fail, a later job knows the new one is ours.
        saved = self._write_ledger(run, folder, ledger, where, [*entries, new])
        # After an Incremental or Differential the last Full's reference point stays: a later
        # Differential asks change tracking for the changes since that Full (at most two per VM).
        kept = _full_base(entries) if self.level is not BackupLevel.FULL else None
        if kept is not None:
            log.info("%s: reference point %s of the Full job %d is kept as the base of differential backups",
                     name, kept.instance_id, kept.job_id)
        try:
            result = run.manager.replace_reference_points(
                run.summary.epr, keep=[rp.instance_id] + ([kept.instance_id] if kept else []),
                ours=[e.instance_id for e in entries])
        except BareosHyperVError as exc:
            log.warning("%s: the older reference points of this plugin could not be listed (%s); they are kept "
                        "and the next job removes them", name, exc)
            return
        jobs = {e.instance_id.lower(): e.job_id for e in entries}
        for rid in result.destroyed:
            log.info("%s: removed reference point %s of job %d, replaced by this job's", name, rid,
                     jobs[rid.lower()])
        for rid, error in result.failed.items():
            log.warning("%s: could not remove reference point %s of job %d, replaced by this job's (%s); "
                        "the next job retries", name, rid, jobs[rid.lower()], error)
        if result.others:
            log.info("%s: %d reference point(s) that this plugin did not record are left alone: %s", name,
                     len(result.others), ", ".join(result.others))
        failed = {rid.lower() for rid in result.failed}
        left = [e for e in entries if e.instance_id.lower() in failed or e is kept]
        if saved and len(left) == len(entries):
            return  # the record is already right
        self._write_ledger(run, folder, ledger, where, [*left, new])

    def _ledger_location(self, run: _VmRun) -> tuple[Location, Location, str]:
        """Folder and file of the VM's record of reference points (and the host path, for messages)."""
        assert run.manifest is not None
        config = run.manifest.vm
        base = self.staging_root or config.config_root or config.snapshot_root
        if not base:
            raise HyperVError("the VM has no configuration folder to keep the record in",
                              context={"vm": str(run.summary.ref)}, what_to_do="set staging_path=")
        folder_path = PureWindowsPath(base) / STATE_DIR
        file_name = f"{run.summary.ref.guid.upper()}{LEDGER_SUFFIX}"
        folder = self.resolver.resolve(str(folder_path), run.node)
        return folder, folder.child(file_name), str(folder_path / file_name)

    def _read_ledger(self, ledger: Location) -> List[_LedgerEntry]:
        """The recorded reference points ([] when nothing was recorded yet)."""
        try:
            with self.storage.open_read(ledger) as reader:
                size = reader.size
                if size > LEDGER_MAX_BYTES:
                    raise StorageError(f"the record is {size} bytes, more than a record of reference points "
                                       "can be", context={"file": str(ledger)},
                                       what_to_do="remove the file; the plugin then keeps every reference point")
                data = reader.read_at(0, size)
        except StorageNotFound:
            return []
        return _parse_ledger(data)

    def _write_ledger(self, run: _VmRun, folder: Location, ledger: Location, where: str,
                      entries: List[_LedgerEntry]) -> bool:
        """Replace the record (through a temporary file and a rename); False when it could not be written."""
        data = _ledger_text(run.summary.ref.guid, entries)
        temp = folder.child(f"{run.summary.ref.guid.upper()}{LEDGER_SUFFIX}.job{self.job_id}")
        try:
            self.storage.makedirs(folder)
            self.storage.delete(temp, missing_ok=True)
            writer = self.storage.create(temp)
            try:
                writer.write(data)
                writer.close()
            except BaseException:
                writer.discard()
                raise
            self.storage.rename(temp, ledger, replace=True)
        except BareosHyperVError as exc:
            with contextlib.suppress(BareosHyperVError):  # else the next write of the record replaces it
                self.storage.delete(temp, missing_ok=True)
            log.warning("%s: could not record this plugin's reference points in %s: %s; a reference point that "
                        "is not recorded is never removed by a later job", run.summary.ref.name, where, exc)
            return False
        return True

    def _final_manifest(self, run: _VmRun) -> Manifest:
        """The manifest with what the core received: size and SHA-256 of every part and disk file.

        A disk file saved as a delta records its file size (not the delta's), its plain SHA-256
        when the job read it whole, its image digest, and the chain of parts that rebuild it.
        """
        assert run.manifest is not None
        manifest = run.manifest
        by_index: Dict[int, _Item] = {}
        parts: List[SaveSetPart] = []
        for item in sorted(run.items.values(), key=lambda i: i.relative):
            relative = item.relative
            digest = run.digests.get(relative)
            if digest is None:
                continue
            if relative.startswith(CONFIG_DIR + "/"):
                parts.append(SaveSetPart(kind=PartKind.CONFIG, name=relative, size=item.entry.size, sha256=digest))
            elif item.disk is not None:
                disk, plan = item.disk, item.disk.plan
                by_index[disk.file.index] = item
                if plan.method is None:
                    parts.append(SaveSetPart(kind=PartKind.DISK, name=relative, size=item.entry.size, sha256=digest,
                                             file_index=disk.file.index, source=disk.host_path))
                else:
                    assert plan.header is not None
                    parts.append(SaveSetPart(kind=PartKind.DELTA, name=relative, size=item.entry.size, sha256=digest,
                                             file_index=disk.file.index, source=disk.host_path,
                                             base_job_id=plan.header.base_job_id,
                                             base_digest=plan.header.base_digest,
                                             result_digest=plan.header.result_digest, method=plan.method))
        disks = []
        for disk_backup in manifest.disks:
            chain = []
            for f in disk_backup.chain:
                saved = by_index.get(f.index)
                if saved is None or saved.disk is None:
                    chain.append(f)
                    continue
                plan = saved.disk.plan
                assert plan.result is not None
                chain.append(dataclasses.replace(f, file_size=plan.size, sha256=plan.sha256,
                                                 image_digest=plan.result.digest(), chunk_size=plan.chunk_size,
                                                 chain=_chain_of(saved, self.job_id)))
            disks.append(dataclasses.replace(disk_backup, chain=chain))
        backup = dataclasses.replace(manifest.backup, parts=parts)
        return dataclasses.replace(manifest, backup=backup, disks=disks)

    def _abort(self, run: _VmRun) -> None:
        """The VM's backup did not complete: destroy its checkpoint and staging folder (best effort).

        What cannot be removed is remembered (:meth:`pending_cleanup`) so that the fd can retry
        with a fresh agent.
        """
        left_checkpoint = ""
        if run.checkpoint is not None and run.manager is not None:
            checkpoint = run.checkpoint
            try:
                try:
                    run.manager.destroy(checkpoint.epr)
                except NotFoundFault:
                    moved = self._locate(run.summary)
                    CheckpointManager(HostServices(self.connector.client(moved.node), moved.node),
                                      timeout=self.timeout).destroy(checkpoint.epr)
                log.warning("%s: the backup did not complete; its checkpoint was removed", run.summary.ref.name)
            except BareosHyperVError as exc:
                left_checkpoint = checkpoint.instance_id
                log.error("%s: could not remove the recovery checkpoint %s: %s; the next job of this plugin "
                          "removes it, or delete it on the host", run.summary.ref.name, checkpoint.instance_id, exc)
            run.checkpoint = None
        staging = run.staging or ""
        left_staging = staging if not self._remove_staging(run) else ""
        if left_checkpoint or left_staging:
            self._left = CleanupRecord(host=self.entry, node=run.node, vm_guid=run.summary.ref.guid,
                                       vm_name=run.summary.ref.name, job_id=self.job_id,
                                       checkpoint_id=left_checkpoint, staging=left_staging)

    def _remove_staging(self, run: _VmRun) -> bool:
        """Remove the VM's staging folder; False when it could not be removed."""
        if run.staging_location is None:
            return True
        location = run.staging_location
        try:
            remove_tree(self.storage, location)
        except BareosHyperVError as exc:
            log.warning("%s: could not remove the staging folder %s: %s", run.summary.ref.name, run.staging, exc)
            return False
        finally:
            run.staging_location = None
        return True

    # ------------------------------------------------------------------ cleanup after a dead agent

    def cleanup(self, record: CleanupRecord) -> Optional[CleanupRecord]:
        """Undo what an agent that died left for one VM; returns what is still left (None: all gone).

        The checkpoint is found on the node that owns the VM now (it may have migrated since),
        by its InstanceID or by this job's checkpoint name; the staging folder is removed where
        it was created.  Nothing else is touched.
        """
        left_checkpoint = ""
        try:
            if not self._cleanup_checkpoints(record):
                left_checkpoint = record.checkpoint_id
        except BareosHyperVError as exc:
            left_checkpoint = record.checkpoint_id or f"{NAME_PREFIX}{record.job_id}"
            log.error("%s: could not remove the recovery checkpoint of job %d: %s; the next job of this "
                      "plugin removes it, or delete it on the host", record.vm_name, record.job_id, exc)
        left_staging = ""
        if record.staging:
            try:
                location = self.resolver.resolve(record.staging, record.node)
                existed = self.storage.exists(location)
                remove_tree(self.storage, location)
                if existed:
                    log.warning("%s: removed the staging folder %s that the interrupted job left", record.vm_name,
                                record.staging)
            except BareosHyperVError as exc:
                left_staging = record.staging
                log.error("%s: could not remove the staging folder %s: %s; delete it on %s", record.vm_name,
                          record.staging, exc, record.node)
        if left_checkpoint or left_staging:
            return CleanupRecord(host=record.host, node=record.node, vm_guid=record.vm_guid,
                                 vm_name=record.vm_name, job_id=record.job_id, checkpoint_id=left_checkpoint,
                                 staging=left_staging)
        return None

    def _find_vm(self, record: CleanupRecord) -> Optional[vmops.VmSummary]:
        """The VM wherever it is now: its cluster owner first, then the node of the record."""
        candidates: List[str] = []
        client = self.connector.client(self.entry)
        cluster = clusterops.cluster_of(client)
        if cluster is not None:
            owner = clusterops.owner_node(client, record.vm_guid)
            if owner:
                candidates.append(owner)
        candidates.append(record.node or self.entry)
        if cluster is not None:
            candidates += [n.name for n in clusterops.cluster_facts(client, cluster).nodes if n.state in (0, 2)]
        seen: set[str] = set()
        for node in candidates:
            if node.upper() in seen:
                continue
            seen.add(node.upper())
            for vm in vmops.list_vms(self.connector.client(node)):
                if vm.ref.guid.upper() == record.vm_guid.upper():
                    return vm
        return None

    def _cleanup_checkpoints(self, record: CleanupRecord) -> bool:
        """Destroy the job's checkpoints of the VM; False when the VM cannot be found at all."""
        vm = self._find_vm(record)
        if vm is None:
            if record.checkpoint_id:
                log.error("%s: the VM (%s) is no longer registered on %s or its cluster; its recovery checkpoint "
                          "%s cannot be removed", record.vm_name, record.vm_guid, record.host, record.checkpoint_id)
                return False
            return True
        node = vm.node.upper()
        client = self.connector.client(node)
        manager = CheckpointManager(HostServices(client, node), timeout=self.timeout)
        name = f"{NAME_PREFIX}{record.job_id}"
        for snap in client.associators(vm.epr, assoc_class=C.SNAPSHOT_OF_VS, result_class=C.VSSD):
            ours = (record.checkpoint_id and snap.str("InstanceID").lower() == record.checkpoint_id.lower()) or (
                snap.opt_str("VirtualSystemType") == C.VirtualSystemType.SNAPSHOT_RECOVERY
                and (snap.opt_str("ElementName") or "") == name)
            if ours and snap.epr is not None:
                manager.destroy(snap.epr)
                log.warning("%s: removed the recovery checkpoint '%s' that the interrupted job left on %s",
                            record.vm_name, snap.opt_str("ElementName") or snap.str("InstanceID"), node)
        return True



# Where the plugin records the reference points it made (see HyperVBackupSource._replace_reference_points).
STATE_DIR = "bareos-hyperv-state"
LEDGER_SUFFIX = ".reference-points"
LEDGER_MAX_BYTES = 1 << 20
# Level recorded for a reference point of a failed job that could not be destroyed: never a base.
UNWANTED_LEVEL = "unwanted"


@dataclass(frozen=True)
class _LedgerEntry:
    """A reference point this plugin made: its InstanceID, the job that made it and that job's level."""

    instance_id: str
    job_id: int
    level: str


def _full_base(entries: Sequence[_LedgerEntry]) -> Optional[_LedgerEntry]:
    """The reference point of the most recent Full job among the recorded ones (None: none recorded)."""
    fulls = [e for e in entries if e.level == BackupLevel.FULL.value]
    return max(fulls, key=lambda e: e.job_id) if fulls else None


def _ledger_text(vm_guid: str, entries: Sequence[_LedgerEntry]) -> bytes:
    """The record: comment lines, then ``<InstanceID> TAB <job id> TAB <level>`` per reference point."""
    lines = [f"# bareos-hyperv: the reference points this plugin made for VM {vm_guid.upper()}.",
             "# A later backup removes them once they are no longer needed; reference points not listed",
             "# here are never touched. Deleting this file makes the plugin keep the ones listed.",
             *(f"{e.instance_id}\t{e.job_id}\t{e.level}" for e in entries)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _parse_ledger(data: bytes) -> List[_LedgerEntry]:
    """Entries of a record; lines that do not parse are skipped (their reference points are then kept)."""
    out: List[_LedgerEntry] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        fields = line.strip().split("\t")
        if line.startswith("#") or len(fields) != 3 or not fields[0] or not fields[1].isdigit():
            continue
        out.append(_LedgerEntry(fields[0], int(fields[1]), fields[2]))
    return out


def _chain_of(item: _Item, job_id: int) -> tuple[ChainPart, ...]:
    """The parts that rebuild a saved disk file: its base's chain and this job's part."""
    assert item.disk is not None
    plan = item.disk.plan
    assert plan.result is not None
    kind = PartKind.DISK if plan.method is None else PartKind.DELTA
    link = ChainPart(job_id=job_id, name=item.relative, kind=kind, image_digest=plan.result.digest())
    before = item.disk.base.chain if item.disk.base is not None and plan.method is not None else []
    return (*before, link)


def _trailer(run: _VmRun) -> str:
    """``SHA256SUMS``: ``sha256sum -c`` format, of the files a restore to a directory leaves.

    Deltas are applied during such a restore, so a disk file is listed under its own name with
    the SHA-256 of the whole file, when the job knows it (a full copy, or a delta made by reading
    the whole file); a file whose delta came from change tracking is proven by its image digest
    (manifest) instead.
    """
    lines = []
    for relative, digest in sorted(run.digests.items()):
        item = run.items[f"{run.directory}/{relative}"]
        if item.disk is None:
            lines.append((relative, digest))
            continue
        plan = item.disk.plan
        if plan.sparse and plan.sha256:
            lines.append((relative[: -len(SPARSE_MARKER)], plan.sha256))  # restored as the plain file
        elif plan.method is None:
            lines.append((relative, digest))
        elif plan.sha256:
            lines.append((relative.rsplit(DELTA_MARKER, 1)[0], plan.sha256))
    return "".join(f"{digest}  {relative}\n" for relative, digest in sorted(lines))


def _config_has_rct(version: str) -> bool:
    """Resilient change tracking needs a configuration version above 5.0 (``hyperv-wmi.md`` §4.4)."""
    major, _, minor = version.partition(".")
    try:
        return (int(major), int(minor or 0)) > (5, 0)
    except ValueError:
        return False


def _legacy_checkpoint_refused(exc: BaseException, vm: vmops.VmSummary, node: str, version: str) -> None:
    """A VM of configuration version 5.0 or older whose host refused the backup checkpoint: say why.

    Whether Hyper-V makes recovery checkpoints of such a VM is not documented (backup vendors
    report both; ``hvsim.configversion``); when the host refuses, the cause is the configuration
    version, and the remedy is to upgrade it.  Raises the explaining error; returns otherwise.
    """
    if not isinstance(exc, HyperVError) or _config_has_rct(version):
        return
    raise HyperVError(
        f"Hyper-V did not make a backup (recovery) checkpoint of the VM, whose configuration version {version} "
        f"predates Windows Server 2016's backup checkpoints, reference points and change tracking: {exc.message}",
        context={"vm": str(vm.ref), "host": node, "configuration version": version},
        what_to_do=f"upgrade the VM's configuration version (Update-VMVersion {vm.ref.name}, with the VM off; it can "
        "then no longer run on Windows Server 2012 R2)") from exc


def _no_reference_point(version: str) -> Optional[str]:
    """Why a VM of this configuration version gets no reference point (None: it gets one).

    Below 6.2 (5.0, a VM kept from Windows Server 2012 R2) Hyper-V has no resilient change tracking
    for the VM and ``ConvertToReferencePoint`` fails (``hvsim.configversion``: Microsoft's
    "Hyper-V backup 2016" and "Upgrade virtual machine version" pages).
    """
    if _config_has_rct(version):
        return None
    return (f"configuration version {version or 'unknown'} has no reference points nor resilient change "
            "tracking (they need 6.2 or later)")


def _rct_id_of(ids: Mapping[str, str], drive: Optional[Drive]) -> Optional[str]:
    """The drive's RCT id at the base's reference point.

    ``VirtualDiskIdentifiers`` name the drive's virtual-disk settings object, the InstanceID the
    manifest keeps as the drive's ``settings_id``; compared case-insensitively.
    """
    if drive is None:
        return None
    return ids.get(drive.settings_id.lower()) or None


def _with_reference_point(manifest: Manifest, rp: ReferencePoint) -> Manifest:
    """The manifest with the reference point the job's checkpoint became (and the RCT id of each disk)."""
    rct = tuple(RctEntry(virtual_disk_id=disk, rct_id=rct_id) for disk, rct_id in rp.rct_ids.items()
                if disk and rct_id)
    point = ReferencePointFacts(instance_id=rp.instance_id, rct=rct, job_id=manifest.backup.job_id)
    return dataclasses.replace(manifest, backup=dataclasses.replace(manifest.backup, reference_point=point))


_ACHIEVED = {Achieved.APPLICATION: Consistency.APPLICATION, Achieved.CRASH: Consistency.CRASH,
             Achieved.COLD: Consistency.COLD}


def _captured(instance: CimInstance) -> CapturedSettings:
    return CapturedSettings(class_name=instance.class_name, instance_id=instance.opt_str("InstanceID") or "",
                            cimxml=to_typed_cimxml(instance))


__all__: Sequence[str] = ["TRAILER_FILE", "HyperVBackupSource", "MemoryReader"]
