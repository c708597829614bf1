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
from bareos_hyperv.backup.context import SourceContext
from bareos_hyperv.backup.incremental import FilePlan, plan_file
from bareos_hyperv.errors import BareosHyperVError, ConfigurationError, HyperVError, StorageError
from bareos_hyperv.hyperv import cluster as clusterops
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv import vms as vmops
from bareos_hyperv.hyperv.checkpoints import NAME_PREFIX, Achieved, Checkpoint, CheckpointManager, ReferencePoint
from bareos_hyperv.hyperv.checkpoints import Consistency as ConsistencyOption
from bareos_hyperv.hyperv.connection import Connector, parse_host_map
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
    escape_component,
    vm_directories,
)
from bareos_hyperv.model.backup import (
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
from bareos_hyperv.model.vm import Drive, DriveKind, VmConfig
from bareos_hyperv.protocol.messages import CleanupRecord, FileEntry
from bareos_hyperv.storage.base import Buffer, FileReader, Storage, StorageNotFound, remove_tree
from bareos_hyperv.storage.delta import DeltaReader, HashingReader
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import Location, LocationResolver, parse_path_map, parse_share_map
from bareos_hyperv.wsman.cim import CimInstance
from bareos_hyperv.wsman.client import CimClient
from bareos_hyperv.wsman.errors import NotFoundFault, WsmanConnectionError
from bareos_hyperv.wsman.transport import TransportOptions

log = logging.getLogger("bareos_hyperv.backup.hyperv")

TRAILER_FILE = "SHA256SUMS"
STAGING_DIR = "bareos-hyperv-staging"
FILE_MODE = stat_mod.S_IFREG | 0o640
# After CreateSnapshot's answer was lost: how long (seconds) to watch for the checkpoint its job
# may still make, and how often to look.
ORPHAN_WAIT = 15.0
ORPHAN_POLL = 0.5
_MB = 1024 * 1024


def _split(value: str, sep: str = ",") -> List[str]:
    return [p.strip() for p in value.split(sep) if p.strip()]


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
        opts = ctx.options
        self.job_id = ctx.job_id
        self.entry = opts.get("host", "").strip()
        self.wanted = _split(opts.get("vm", ""))
        if not self.entry or not self.wanted:
            raise ConfigurationError("source=hyperv needs host= and vm=",
                                     what_to_do="name the Hyper-V host or cluster in host= and the VMs in vm=")
        self.excluded = _split(opts.get("exclude_vm", ""))
        self.consistency = ConsistencyOption.parse(opts.get("consistency", "application"))
        # Level and base come from Bareos (bVarLevel, bVarSinceTime, the previous job's restore
        # objects), never from a file on the fd host (reference §3.2, §12).
        self.level = BackupLevel.from_bareos(ctx.level or "F")
        self.since = ctx.since
        self._ctx = ctx
        self.previous = PreviousBackup()
        self.timeout = float(opts.get("timeout", "1800"))
        self.staging_root = opts.get("staging_path", "").strip() or None
        credentials = ctx.credentials()
        transport = TransportOptions(
            transport=opts.get("transport", "ntlm"),
            cert_validation=opts.get("cert_validation", "yes") == "yes",
            ca_trust_path=opts.get("ca_trust_path") or None,
        )
        port = opts.get("port")
        self.connector = Connector(credentials, transport, https=opts.get("https", "no") == "yes",
                                   port=int(port) if port else None,
                                   host_map=parse_host_map(opts.get("host_map", "")))
        local = opts.get("data", "smb") == "local"
        self.resolver = LocationResolver(parse_share_map(_split(opts.get("share_map", ""), ";")),
                                         parse_path_map(_split(opts.get("path_map", ""), ";")), local=local)
        self.storage: Storage
        if local:
            self.storage = LocalStorage()
        else:
            from bareos_hyperv.storage.smb import SmbOptions, SmbStorage  # smbprotocol only when used

            smb_options = SmbOptions(encrypt=opts.get("smb_encrypt", "no") == "yes")
            if opts.get("smb_mover"):  # unset: the agent's environment or smbprotocol decides
                smb_options = dataclasses.replace(smb_options, mover=opts["smb_mover"])
            smb_map = {k: (a, p or 445) for k, (a, p) in parse_host_map(opts.get("smb_host_map", "")).items()}
            self.storage = SmbStorage.from_credentials(
                credentials, endpoints=smb_map, options=smb_options)
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

    def _resolve(self) -> None:
        """Find the VMs the FileSet names (one inventory of the host or cluster)."""
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
        host = self._host(run.node)
        settings = vmops.read_settings(client, vm)
        config = vmops.normalise(vm, settings, host.switches)
        images = ImageService(services, timeout=self.timeout)
        if self.level is not BackupLevel.FULL:
            run.base = self.previous.vm(vm.ref.guid)
            if run.base is None and self.previous.job_id is not None:
                log.warning("%s: job %d did not back this VM up: every disk of it is copied in full", vm.ref.name,
                            self.previous.job_id)
        disks, files = self._disks(config, images, run.base)

        before = self._recovery_ids(client, vm)
        try:
            run.checkpoint = manager.create(vm.epr, vm.ref.guid, vm.state, self.consistency, self.job_id)
        except WsmanConnectionError:
            # The host may have carried the call out although its answer was lost; its job then
            # makes the checkpoint a little later: watch for it for a while.
            self._remove_new_checkpoints(client, manager, vm, before, wait=ORPHAN_WAIT)
            raise
        except BaseException:
            # Failed or interrupted after the checkpoint was made (e.g. while naming it): a
            # recovery checkpoint that was not there before is this job's, named or not.
            self._remove_new_checkpoints(client, manager, vm, before)
            raise
        for warning in run.checkpoint.warnings:
            log.warning("%s: %s", vm.ref.name, warning)
        log.info("%s: %s checkpoint taken on %s", vm.ref.name, run.checkpoint.achieved.value, run.node)

        run.staging = self._staging_path(config)
        run.staging_location = self.resolver.resolve(run.staging, run.node)
        export_configuration(services, vm.epr, run.checkpoint.epr, run.staging, timeout=self.timeout)
        config_items = self._config_items(run)

        manifest = Manifest(
            backup=BackupFacts(
                level=self.level,
                job_id=self.job_id,
                time=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0),
                consistency_requested=ConsistencyMode(self.consistency.value),
                consistency_achieved=_ACHIEVED[run.checkpoint.achieved],
                plugin_version=__version__,
                checkpoint_id=run.checkpoint.instance_id,
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
        """``manifest.xml`` names, per disk file saved as a delta, the chain that rebuilds it.

        A delta's result is known before the list is returned, so the manifest in the save set can
        say which image each such file must end at: a restore to a directory checks that no final
        delta is missing (a full copy's digest is known only after its transfer; it needs no chain).
        """
        assert run.manifest is not None
        by_index = {i.disk.file.index: i for i in run.items.values() if i.disk is not None
                    and i.disk.plan.method is not None and i.disk.plan.result is not None}
        if not by_index:
            return
        disks = []
        for disk_backup in run.manifest.disks:
            chain = []
            for f in disk_backup.chain:
                item = by_index.get(f.index)
                if item is None or item.disk is None or item.disk.plan.result is None:
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
                relative = f"{DISKS_DIR}/{disk_file.index}-{file_name}"
                if run.base is not None:
                    log.warning("%s: %s is copied in full: %s", vm.ref.name, relative, plan.reason)
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
        if point is None:
            return f"job {base_job} left no reference point"
        if not _config_has_rct(config.version):
            return f"configuration version {config.version} has no resilient change tracking (it needs above 5.0)"
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

    def _disks(self, config: VmConfig, images: ImageService,
               base: Optional[VmBase]) -> tuple[List[DiskBackup], List[tuple[DiskFile, str]]]:
        """Each drive's chain (leaf first) and the files to save; skipped drives say why.

        A file keeps the number ``<n>`` it had in the base job (matched by host path), so that
        its deltas carry the name of its full copy; files new since then get numbers above all
        the base job used.
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
                for info in images.chain(drive.path):
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

    def _staging_path(self, config: VmConfig) -> str:
        base = self.staging_root or str(PureWindowsPath(config.config_root or config.snapshot_root) / STAGING_DIR)
        return str(PureWindowsPath(base) / f"job{self.job_id}-{config.ref.guid}")

    def _config_items(self, run: _VmRun) -> List[tuple[str, Location, int, int]]:
        """The exported configuration files, found in the staging folder over SMB (or locally)."""
        assert run.staging is not None and run.staging_location is not None
        out = []
        folder = self.resolver.resolve(str(PureWindowsPath(run.staging) / "Virtual Machines"), run.node)
        for entry in self.storage.listdir(folder):
            if entry.is_dir:
                continue
            location = self.resolver.resolve(str(PureWindowsPath(run.staging) / "Virtual Machines" / entry.name),
                                             run.node)
            st = self.storage.stat(location)
            out.append((f"{CONFIG_DIR}/{escape_component(entry.name)}", location, st.size, int(st.mtime)))
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
        final = to_xml(_with_reference_point(self._final_manifest(run), rp)).decode("utf-8")
        if len(final.encode("utf-8")) > MAX_OBJECT_BYTES:
            log.warning("%s: the manifest (%d bytes) is too large for a Bareos restore object; a restore into "
                        "Hyper-V will not be possible, a restore of the files is, and the next incremental or "
                        "differential copies every disk in full", run.summary.ref.name, len(final))
        else:
            out.append(FileEntry(name=f"{run.directory}/{MANIFEST_OBJECT}", size=len(final), mtime=int(time.time()),
                                 mode=FILE_MODE, restore_object=final))
        out += self._base_objects(run)
        return out

    def _complete_full_copies(self, run: _VmRun) -> None:
        """The chunk digests of every full copy, gathered while the core read it."""
        for item in run.items.values():
            plan = item.disk.plan if item.disk is not None else None
            if plan is None or plan.method is not None or plan.result is not None:
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
                bat_offset=plan.bat_offset, bat=plan.bat)
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
        if plan.method is None:
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
