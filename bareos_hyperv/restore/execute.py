r"""Restore into Hyper-V: carry out the plans (``DESIGN.md`` "Restore").

Order of work, per VM, so that nothing that existed before is changed until the new copy is
whole:

1. :meth:`HyperVRestore.plan` (before any data): each VM's final manifest (a restore object)
   is read, the destination's live facts gathered, the plan made and printed.  A VM whose plan
   has blocking problems is refused: its items are skipped and the job fails naming it.
2. Items (:meth:`HyperVRestore.open_item` / :meth:`HyperVRestore.item_done`): configuration
   files go to the plan's staging folder; each disk file to a temporary name next to its
   planned path (``.<file>.bareos-hyperv-<jobid>.partial``), checked against the manifest's
   size and SHA-256, then renamed into place.  A disk that replaces a file of the VM being
   overwritten stays under its temporary name until that VM is gone.  A disk file of an
   incremental or differential point is its full image plus each delta of the same file, in job
   order, applied in place to the temporary file (base checked first); the point's image digest
   (and plain SHA-256 when known) is checked before the rename.  A missing or out-of-order part
   fails the VM.
3. :meth:`HyperVRestore.finish`: per VM, one after the other: remove the VM being overwritten
   (asked for), import the staged definition as a planned VM, point its disks and adapters at
   their planned places, rename it, validate, realize, register it in the cluster on the
   planned node, start it if asked.  On any failure, everything this job created for the VM is
   removed (planned or realized VM, cluster role, disk files, staging folder) and the VM is
   reported failed with what is left where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import PureWindowsPath
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from bareos_hyperv.errors import BareosHyperVError, HyperVError, ManifestError, StorageError
from bareos_hyperv.hyperv import cluster as clusterops
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.hyperv.importer import DefinitionImportRefused, PlannedVm, VmImporter
from bareos_hyperv.manifest.document import Manifest, from_xml
from bareos_hyperv.manifest.layout import MANIFEST_FILE, MANIFEST_OBJECT, SPARSE_MARKER
from bareos_hyperv.model.backup import ChainPart, DiskFile, PartKind, SaveSetPart
from bareos_hyperv.model.restore import RestoreOptions
from bareos_hyperv.model.vm import DriveSlot, PowerState, VmRef
from bareos_hyperv.protocol.messages import CleanupRecord, RestoreObject
from bareos_hyperv.restore.facts import gather_destination
from bareos_hyperv.restore.plan import (
    DiskPlacement,
    DiskReason,
    VmPlan,
    candidate_folders,
    default_entry,
    make_plan,
)
from bareos_hyperv.restore.render import render_plan
from bareos_hyperv.storage.base import Buffer, FileUpdater, FileWriter, Storage, remove_tree
from bareos_hyperv.storage.delta import DeltaApplier, DeltaBaseMismatch, ImageHashes
from bareos_hyperv.storage.locations import Location, LocationResolver

__all__ = ["OBJECT_SUFFIX", "HyperVRestore", "ItemTarget", "undo_record"]

log = logging.getLogger("bareos_hyperv.restore")

OBJECT_SUFFIX = "/" + MANIFEST_OBJECT
# Items of a VM's tree that the restore does not write: the manifest is known from the restore
# object (with digests), and the digests file is for restores to a directory.
NOT_WRITTEN = frozenset({MANIFEST_FILE, "SHA256SUMS"})
PARTIAL = ".bareos-hyperv-{job}.partial"
_MB = 1024 * 1024


@dataclass
class _Written:
    """A file this job wrote on the destination (removed again when its VM fails)."""

    temp: Location
    final: Location
    final_path: str
    renamed: bool = False
    temp_path: str = ""


@dataclass
class ItemTarget:
    """Where one item's bytes go: a writer, and what the bytes must be."""

    name: str
    writer: FileWriter
    part: SaveSetPart
    vm: str
    record: _Written


@dataclass
class _Image:
    """A disk file being rebuilt: its temporary file, how far along its chain, its chunk digests."""

    record: _Written
    file: DiskFile
    chain: Tuple[ChainPart, ...]
    applied: int = 0  # parts of the chain written or applied so far
    hashes: Optional[ImageHashes] = None  # chunk digests after the last applied delta


class _DeltaWriter:
    """A delta item's bytes applied to its disk file's temporary file (a FileWriter).

    Any failure (wrong base, damage, a result that differs) fails the VM at once; the file is
    closed so that the VM's undo can remove it.
    """

    def __init__(self, restore: HyperVRestore, vm: _Vm, updater: FileUpdater, applier: DeltaApplier) -> None:
        self._restore = restore
        self._vm = vm
        self._updater = updater
        self.applier = applier

    @property
    def written(self) -> int:
        return self.applier.written

    def _failed(self, exc: BaseException) -> None:
        self.applier.discard()
        try:
            self._updater.close()
        except BareosHyperVError as close_exc:
            log.debug("closing %s after a failed delta: %s", self.applier.name, close_exc)
        self._restore._fail(self._vm, str(exc))

    def write(self, data: Union[bytes, Buffer]) -> int:
        try:
            return self.applier.write(data)
        except BaseException as exc:
            self._failed(exc)
            raise

    def close(self) -> None:
        try:
            self.applier.close()  # closes the updater after the result digest matched
        except BaseException as exc:
            self._failed(exc)
            raise

    def discard(self) -> None:
        self._failed(StorageError(f"{self.applier.name}: the delta was not applied completely"))

    def __enter__(self) -> _DeltaWriter:
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


@dataclass
class _Vm:
    """One VM of the restore: its manifest, plan and what the job created for it."""

    directory: str
    job_id: int
    manifest: Manifest
    plan: Optional[VmPlan] = None
    parts: Dict[str, SaveSetPart] = field(default_factory=dict)  # relative name -> part (the chain's, too)
    images: Dict[int, _Image] = field(default_factory=dict)  # disk file index -> its rebuild
    received: Dict[str, str] = field(default_factory=dict)  # relative name -> sha256 as received
    written: List[_Written] = field(default_factory=list)
    staging_created: bool = False
    failed: Optional[str] = None
    planned: Optional[PlannedVm] = None
    realized: Optional[str] = None  # GUID of the VM this job created
    role: Optional[str] = None  # cluster group this job created
    announced: bool = False
    # Planned VMs on the node before this job's import, None when no import was started: an
    # import interrupted before its answer leaves a planned VM this job did not learn the ID of.
    planned_before: Optional[Set[str]] = None
    done: bool = False  # restored: what the job wrote for it is the VM's now

    @property
    def label(self) -> str:
        return self.manifest.vm.ref.name


def _relative(name: str) -> Tuple[str, str]:
    """(VM directory, path below it) of a save-set item name (``@hyperv/<scope>/<vm>/<rest>``)."""
    parts = name.lstrip("/").split("/")
    if len(parts) < 4 or parts[0] != "@hyperv":
        raise ManifestError(f"restore item {name!r} is not part of a bareos-hyperv VM tree",
                            what_to_do="select only the @hyperv files of this plugin's jobs")
    return "/".join(parts[:3]), "/".join(parts[3:])


class HyperVRestore:
    """One restore job into Hyper-V (see module docstring)."""

    def __init__(self, options: RestoreOptions, connector: Connector, storage: Storage,
                 resolver: LocationResolver, *, job_id: int, timeout: float) -> None:
        self.options = options
        self.connector = connector
        self.storage = storage
        self.resolver = resolver
        self.job_id = job_id
        self.timeout = timeout
        self.vms: Dict[str, _Vm] = {}

    # ------------------------------------------------------------------ plan

    def plan(self, objects: Sequence[RestoreObject]) -> Tuple[List[str], List[str]]:
        """Read the manifests, plan each VM against the destination; returns (planned, refused) VM names."""
        every: Dict[str, Dict[int, RestoreObject]] = {}
        for obj in objects:
            if not obj.name.endswith(OBJECT_SUFFIX):
                continue
            directory = obj.name[: -len(OBJECT_SUFFIX)]
            _relative(directory + "/" + MANIFEST_FILE)  # refuses names outside a VM tree
            every.setdefault(directory, {})[obj.jobid] = obj
        chain_problems: Dict[str, str] = {}
        for directory, by_job in sorted(every.items()):
            # The chosen point is the newest job of the restore (Bareos sends the objects of every job
            # of the chain up to it); the older jobs' manifests describe the parts of its disk chains.
            jobid = max(by_job)
            obj = by_job[jobid]
            manifest = from_xml(obj.data.encode("utf-8"), source=f"restore object {obj.name} of job {jobid}")
            if self.options.vms and not self._wanted(manifest):
                continue
            vm = _Vm(directory=directory, job_id=jobid, manifest=manifest)
            try:
                vm.parts = self._parts_of_point(manifest, jobid, by_job)
            except ManifestError as exc:
                chain_problems[directory] = str(exc)
            self.vms[directory] = vm
        if not self.vms:
            wanted = ", ".join(self.options.vms) or "any VM"
            raise ManifestError(f"the restore holds no VM manifest matching {wanted}",
                                what_to_do="check restore_vm= against the VM names of the backup job")
        planned: List[str] = []
        refused: List[str] = []
        for vm in self.vms.values():
            if vm.directory in chain_problems:
                self._fail(vm, chain_problems[vm.directory])
                refused.append(vm.label)
                continue
            vm.plan = self._plan_vm(vm)
            for line in render_plan(vm.plan):
                log.info("%s", line)
            if vm.plan.ok:
                planned.append(vm.label)
            else:
                vm.failed = "its restore plan has blocking problems"
                refused.append(vm.label)
                for problem in vm.plan.problems:
                    log.error("%s: %s (%s)", vm.label, problem.message, problem.resolve)
        return planned, refused

    @staticmethod
    def _parts_of_point(manifest: Manifest, jobid: int, by_job: Dict[int, RestoreObject]) -> Dict[str, SaveSetPart]:
        """Every save-set part the chosen point needs: its configuration files and each disk file's chain.

        A disk file saved as a delta is rebuilt from the full image an older job saved and each
        delta after it, in job order; those parts are described by their own job's manifest.
        """
        parts = {p.name: p for p in manifest.backup.parts if p.kind is PartKind.CONFIG}
        own = {p.name: p for p in manifest.backup.parts}
        others: Dict[int, Dict[str, SaveSetPart]] = {jobid: own}
        for disk in manifest.disks:
            for file in disk.chain:
                if not file.chain:  # a manifest of an older version: the full image is this job's part
                    parts.update({p.name: p for p in manifest.backup.parts
                                  if p.kind is PartKind.DISK and p.file_index == file.index})
                    continue
                if file.chain[0].kind is not PartKind.DISK or any(c.kind is not PartKind.DELTA
                                                                   for c in file.chain[1:]):
                    raise ManifestError(f"the chain of disk file {file.index} of job {jobid} does not start with "
                                        "its full image followed by deltas",
                                        what_to_do="restore another job; report this as a bug with the manifest")
                for link in file.chain:
                    if link.job_id not in others:
                        obj = by_job.get(link.job_id)
                        if obj is None:
                            raise ManifestError(
                                f"disk file {file.index} of the point of job {jobid} is rebuilt from "
                                f"{link.name} of job {link.job_id}, whose manifest is not part of this restore",
                                what_to_do="restore the whole chain (the full backup and every later "
                                           "incremental or differential job up to the point wanted) in one "
                                           "restore job")
                        older = from_xml(obj.data.encode("utf-8"),
                                         source=f"restore object {obj.name} of job {link.job_id}")
                        others[link.job_id] = {p.name: p for p in older.backup.parts}
                    part = others[link.job_id].get(link.name)
                    if part is None or part.kind is not link.kind or part.file_index != file.index:
                        raise ManifestError(f"the manifest of job {link.job_id} does not list {link.name} as a "
                                            f"part of disk file {file.index}",
                                            what_to_do="restore another job; report this as a bug with the "
                                                       "manifests")
                    parts[link.name] = part
        return parts

    def _wanted(self, manifest: Manifest) -> bool:
        ref = manifest.vm.ref
        return any(w.casefold() in (ref.name.casefold(), ref.guid.casefold()) for w in self.options.vms)

    def _plan_vm(self, vm: _Vm) -> VmPlan:
        manifest = vm.manifest
        options = self.options
        destination = gather_destination(
            self.connector, default_entry(manifest, options), storage=self.storage, resolver=self.resolver,
            candidate_folders=lambda bare: candidate_folders(manifest, options, bare))
        return make_plan(manifest, options, destination, job_id=self.job_id)

    # ------------------------------------------------------------------ items

    def open_item(self, name: str, size: int) -> Tuple[Optional[ItemTarget], str]:
        """Where the bytes of item ``name`` go, or (None, why it is skipped)."""
        directory, relative = _relative(name)
        vm = self.vms.get(directory)
        if vm is None:
            return None, "not a VM of this restore"
        if relative in NOT_WRITTEN or relative.endswith(OBJECT_SUFFIX.lstrip("/")):
            return None, "not needed for a restore into Hyper-V"
        if vm.failed is not None:
            return None, f"VM {vm.label} is not restored: {vm.failed}"
        if self.options.dry_run:
            return None, "restore_dry_run=yes"
        plan = vm.plan
        assert plan is not None
        part = vm.parts.get(relative)
        if part is None:
            self._fail(vm, f"the item {relative} is not listed in the VM's manifest")
            return None, "not in the manifest"
        if part.size != size:
            self._fail(vm, f"the item {relative} has {size} bytes in the save set, the manifest says {part.size}")
            return None, "size differs from the manifest"
        if not vm.announced:
            vm.announced = True
            log.info("%s: restoring to %s as '%s'", vm.label, plan.node, plan.name)
        try:
            if part.kind is PartKind.CONFIG:
                staged = next((c for c in plan.config_files if c.part == relative), None)
                if staged is None:
                    self._fail(vm, f"the configuration file {relative} has no place in the restore plan")
                    return None, "not planned"
                final_path = temp_path = staged.dest_path
            elif part.kind is PartKind.DISK:
                placement = self._placement(plan, part)
                final_path = placement.dest_path
                folder = PureWindowsPath(final_path).parent
                temp_path = str(folder / ("." + PureWindowsPath(final_path).name + PARTIAL.format(job=self.job_id)))
            else:
                return self._open_delta(vm, name, part)
            temp = self.resolver.resolve(temp_path, plan.node)
            final = self.resolver.resolve(final_path, plan.node)
            parent = self.resolver.resolve(str(PureWindowsPath(temp_path).parent), plan.node)
            self.storage.makedirs(parent)
            if part.kind is PartKind.CONFIG:
                vm.staging_created = True
            self.storage.delete(temp, missing_ok=True)  # left by a killed agent of this same job
            writer: FileWriter = self.storage.create(temp)
            sparse = part.kind is PartKind.DISK and relative.endswith(SPARSE_MARKER)
            if sparse:
                writer.close()  # an empty file: the sparse full is applied to it in place
        except BareosHyperVError as exc:
            self._fail(vm, f"cannot write {relative}: {exc}")
            raise
        record = _Written(temp=temp, final=final, final_path=final_path, renamed=temp_path == final_path,
                          temp_path=temp_path)
        vm.written.append(record)
        if sparse:
            # Set to its final length (a hole where the volume allows), the referenced ranges
            # written, the image digest checked while writing: nothing is read back.
            try:
                updater = self.storage.open_update(temp)
            except BareosHyperVError as exc:
                self._fail(vm, f"cannot write {relative}: {exc}")
                raise
            writer = _DeltaWriter(self, vm, updater, DeltaApplier(updater, name=relative))
        if part.kind is PartKind.DISK and part.file_index is not None:
            file = self._disk_file(vm, part.file_index)
            vm.images[part.file_index] = _Image(record=record, file=file, chain=file.chain)
        return ItemTarget(name=name, writer=writer, part=part, vm=directory, record=record), ""

    @staticmethod
    def _disk_file(vm: _Vm, index: int) -> DiskFile:
        for disk in vm.manifest.disks:
            for file in disk.chain:
                if file.index == index:
                    return file
        raise ManifestError(f"the manifest of {vm.label} lists no disk file {index}",
                            what_to_do="report this as a bug with the job log")

    def _open_delta(self, vm: _Vm, name: str, part: SaveSetPart) -> Tuple[Optional[ItemTarget], str]:
        """A delta: applied in place to its disk file's temporary file, right after the part before it."""
        relative = part.name
        image = vm.images.get(part.file_index) if part.file_index is not None else None
        position = next((i for i, link in enumerate(image.chain) if link.name == relative), -1) if image else -1
        if image is None or position != image.applied:
            expected = (f"{image.chain[image.applied].name}" if image is not None and image.applied < len(image.chain)
                        else "the disk file's full image")
            self._fail(vm, f"the delta {relative} arrived before {expected}: a part of the disk file's chain is "
                           "missing or out of order; restore the whole chain (the full backup and every later "
                           "incremental or differential job up to the point wanted) in one restore job")
            return None, "a part of its chain is missing"
        updater = self.storage.open_update(image.record.temp)
        applier = DeltaApplier(updater, name=relative, base=image.hashes,
                               expect_base_job=image.chain[position - 1].job_id)
        writer = _DeltaWriter(self, vm, updater, applier)
        return ItemTarget(name=name, writer=writer, part=part, vm=vm.directory, record=image.record), ""

    def _image_done(self, vm: _Vm, image: _Image) -> bool:
        """A part of the file's chain is in place; when it was the last: check the file is the point's image."""
        image.applied += 1
        if image.applied < len(image.chain):
            return False
        file = image.file
        if image.hashes is not None and file.image_digest is not None and image.hashes.digest() != file.image_digest:
            raise DeltaBaseMismatch(f"{vm.label}: disk file {file.index} was rebuilt to image "
                                    f"{image.hashes.digest()[:16]}..., the point of job {vm.job_id} recorded "
                                    f"{file.image_digest[:16]}...",
                                    what_to_do="restore the whole chain up to the point wanted in one restore job")
        if file.sha256 is not None and len(image.chain) > 1:
            digest = hashlib.sha256()
            with self.storage.open_read(image.record.temp) as reader:
                buf = bytearray(_MB)
                view = memoryview(buf)
                while True:
                    n = reader.readinto(buf)
                    if not n:
                        break
                    digest.update(view[:n])
            if digest.hexdigest() != file.sha256:
                raise DeltaBaseMismatch(f"{vm.label}: disk file {file.index} was rebuilt with SHA-256 "
                                        f"{digest.hexdigest()}, the point of job {vm.job_id} recorded {file.sha256}",
                                        what_to_do="restore again; check the destination storage")
        return True

    @staticmethod
    def _placement(plan: VmPlan, part: SaveSetPart) -> DiskPlacement:
        for placement in plan.disks:
            if placement.file_index == part.file_index:
                return placement
        raise ManifestError(f"the disk file {part.name} has no place in the restore plan",
                            what_to_do="report this as a bug with the job log")

    def item_done(self, target: ItemTarget, size: int, sha256: str, seconds: float = 0.0) -> None:
        """The core wrote the whole item: check it against the manifest, then put it in place."""
        vm = self.vms[target.vm]
        part = target.part
        record = target.record
        if size != part.size or sha256 != part.sha256:
            self._fail(vm, f"{part.name} arrived with {size} bytes and SHA-256 {sha256}, the manifest "
                           f"says {part.size} bytes and {part.sha256}")
            raise StorageError(f"{vm.label}: {part.name} does not match its manifest (size or SHA-256)",
                               what_to_do="the save set is damaged or belongs to another backup; "
                                          "restore another job")
        vm.received[part.name] = sha256
        image = vm.images.get(part.file_index) if part.file_index is not None else None
        if image is not None and part.kind in (PartKind.DISK, PartKind.DELTA):
            if isinstance(target.writer, _DeltaWriter):
                image.hashes = target.writer.applier.result
            try:
                complete = self._image_done(vm, image)
            except BareosHyperVError as exc:
                self._fail(vm, str(exc))
                raise
            if not complete:
                return  # more deltas of this file follow: it stays under its temporary name
            if len(image.chain) > 1:
                log.info("%s: %s rebuilt from %d parts (jobs %s), image digest verified", vm.label,
                         record.final_path, len(image.chain), ", ".join(str(c.job_id) for c in image.chain))
        if record.renamed:
            return
        placement = self._placement(vm.plan, part) if vm.plan else None
        if placement is not None and placement.reason is DiskReason.REPLACES_OVERWRITTEN:
            return  # renamed once the VM it replaces is gone
        self.storage.rename(record.temp, record.final, replace=False)
        record.renamed = True
        log.info("%s: %s written to %s, %.1f MB in %.1f s (%.1f MB/s), SHA-256 verified", vm.label, part.name,
                 record.final_path, size / _MB, seconds, size / _MB / max(seconds, 1e-6))

    # ------------------------------------------------------------------ finish

    def finish(self) -> Tuple[List[str], Dict[str, str]]:
        """Import every VM whose items all arrived; returns (restored, failed with reason)."""
        restored: List[str] = []
        failed: Dict[str, str] = {}
        for vm in self.vms.values():
            if vm.failed is None and not self.options.dry_run:
                missing = sorted(set(vm.parts) - set(vm.received))
                if not vm.announced:
                    log.info("%s: none of its files were selected; not restored", vm.label)
                    continue
                if missing:
                    self._fail(vm, f"not every file arrived (missing: {', '.join(missing)}); select the VM's "
                                   "whole tree in the restore")
                else:
                    try:
                        self._import(vm)
                        vm.done = True
                        restored.append(vm.label)
                        continue
                    except BareosHyperVError as exc:
                        self._fail(vm, str(exc))
            if vm.failed is not None:
                left = self._undo(vm)
                failed[vm.label] = vm.failed + (f"; left behind: {left}" if left else "; nothing was left behind")
        return restored, failed

    def _fail(self, vm: _Vm, why: str) -> None:
        if vm.failed is None:
            vm.failed = why
            log.error("%s: %s", vm.label, why)

    def _import(self, vm: _Vm) -> None:
        plan = vm.plan
        assert plan is not None
        started = time.monotonic()
        client = self.connector.client(plan.node)
        importer = VmImporter(client, plan.node, timeout=self.timeout)
        if plan.overwrite is not None:
            self._replace(vm, importer)
        vmcx = next((p.name for p in vm.parts.values() if p.kind is PartKind.CONFIG
                     and p.name.lower().endswith((".vmcx", ".xml"))), None)
        if vmcx is None:
            raise ManifestError(f"{vm.label}: the backup holds no configuration file (.vmcx) to import",
                                what_to_do="restore the files into a directory and create the VM by hand")
        definition = str(PureWindowsPath(plan.staging_folder) / "Virtual Machines" / PureWindowsPath(vmcx).name)
        leaves: Dict[DriveSlot, str] = {}
        for disk in vm.manifest.disks:
            if disk.chain:
                leaf = next(p for p in plan.disks if p.file_index == disk.chain[0].index)
                leaves[leaf.slot] = leaf.dest_path
        switches = {a.mac: a.dest_switch for a in plan.adapters}
        vm.planned_before = {p.guid for p in importer.planned_systems()}
        try:
            vm.planned = importer.import_definition(
                definition, new_id=not plan.keep_id,
                snapshot_folder=str(PureWindowsPath(plan.staging_folder) / "Snapshots"))
        except DefinitionImportRefused as exc:
            if plan.keep_id:
                raise  # DefineSystem always makes a new ID: not what a restore keeping the ID promised
            log.warning("%s: %s; defining the VM from the settings the backup captured instead (DefineSystem)",
                        vm.label, exc)
            ref = self._define(vm, importer, leaves, switches)
        else:
            log.info("%s: imported as planned VM %s on %s", vm.label, vm.planned.guid, plan.node)
            ref = self._fix_up_and_realize(vm, importer, leaves, switches)
        vm.realized = ref.guid
        log.info("%s: realized as VM '%s' (%s) on %s", vm.label, ref.name, ref.guid, plan.node)
        if plan.cluster_role and plan.cluster:
            cluster_client = self.connector.client(plan.node)
            group = clusterops.add_vm_role(cluster_client, plan.cluster, ref.guid)
            vm.role = group.name
            if group.owner_node.upper() != plan.node.upper():
                clusterops.move_role(cluster_client, group.name, plan.node)
            log.info("%s: highly available in cluster %s as role '%s', owner %s", vm.label, plan.cluster,
                     group.name, plan.node)
        if self.options.start:
            importer.start(ref.guid)
            log.info("%s: started", vm.label)
        self._remove_staging(vm)
        log.info("%s: restored in %.1f s", vm.label, time.monotonic() - started)

    def _fix_up_and_realize(self, vm: _Vm, importer: VmImporter, leaves: Dict[DriveSlot, str],
                            switches: Dict[str, Optional[str]]) -> VmRef:
        """The imported planned VM: disks, adapters, devices, name and folders; validate; realize."""
        plan = vm.plan
        assert plan is not None and vm.planned is not None
        if leaves:
            importer.retarget_disks(vm.planned, leaves)
        if switches:
            importer.connect_adapters(vm.planned, switches)
        if plan.dropped:
            importer.remove_devices(vm.planned, [d.settings_id for d in plan.dropped])
        vm.planned = importer.set_system(vm.planned, name=plan.name, config_root=plan.config_root,
                                         snapshot_root=plan.config_root)
        findings = importer.validate(vm.planned)
        for warning in (p for p in findings if not p.blocking):
            log.warning("%s: Hyper-V warns: %s (ID %s)", vm.label, warning.message, warning.message_id)
        problems = [p for p in findings if p.blocking]
        if problems:
            raise HyperVError(f"Hyper-V on {plan.node} refused the restored configuration: "
                              + "; ".join(f"{p.message} (ID {p.message_id})" for p in problems),
                              what_to_do="adjust the restore options the messages point to and restore again")
        ref = importer.realize(vm.planned)
        vm.planned = None
        return ref

    def _define(self, vm: _Vm, importer: VmImporter, leaves: Dict[DriveSlot, str],
                switches: Dict[str, Optional[str]]) -> VmRef:
        """The fallback: a new VM from the manifest's captured settings (devices that cannot come back left out)."""
        plan = vm.plan
        assert plan is not None
        settings = vm.manifest.settings
        dropped = {d.settings_id.lower() for d in plan.dropped}
        resources = [r for r in settings.resources if r.instance_id.lower() not in dropped]
        return importer.define_from_captured(settings.system, resources, name=plan.name,
                                             config_root=plan.config_root, disk_paths=leaves, switches=switches)

    def _replace(self, vm: _Vm, importer: VmImporter) -> None:
        """Remove the VM being overwritten (its new disks are written and verified), then move them in."""
        plan = vm.plan
        assert plan is not None and plan.overwrite is not None
        old = plan.overwrite
        if old.group:
            clusterops.remove_vm_role(self.connector.client(old.node), old.group)
        old_importer = importer if old.node.upper() == plan.node.upper() else VmImporter(
            self.connector.client(old.node), old.node, timeout=self.timeout)
        if old.state not in (PowerState.OFF, PowerState.SAVED):  # DestroySystem wants it off or saved
            old_importer.turn_off(old.guid)
        old_importer.destroy_vm(old.guid)
        log.warning("%s: removed the existing VM %s on %s (restore_overwrite=yes)", vm.label, old.guid, old.node)
        for w in vm.written:
            if not w.renamed:
                self.storage.rename(w.temp, w.final, replace=True)
                w.renamed = True
                log.info("%s: %s replaced by the restored disk", vm.label, w.final_path)

    # ------------------------------------------------------------------ undo

    def _undo(self, vm: _Vm) -> str:
        """Remove what this job created for the VM; returns what could not be removed ('' = all gone)."""
        left: List[str] = []
        plan = vm.plan
        node = plan.node if plan else ""
        if vm.role and plan is not None:
            try:
                clusterops.remove_vm_role(self.connector.client(node), vm.role)
            except BareosHyperVError as exc:
                left.append(f"cluster role {vm.role} ({exc})")
        if vm.planned is not None or vm.realized is not None or vm.planned_before is not None:
            try:
                importer = VmImporter(self.connector.client(node), node, timeout=self.timeout)
                if vm.planned is None and vm.realized is None and vm.planned_before is not None:
                    # The import was interrupted: a planned VM of this name that was not there before is ours.
                    for other in importer.planned_systems():
                        if other.guid not in vm.planned_before and other.name == vm.manifest.vm.ref.name:
                            importer.destroy_planned(other)
                if vm.planned is not None:
                    importer.destroy_planned(vm.planned)
                if vm.realized is not None:
                    if self.options.start:
                        importer.turn_off(vm.realized)
                    importer.destroy_vm(vm.realized)
            except BareosHyperVError as exc:
                left.append(f"VM {vm.realized or (vm.planned.guid if vm.planned else '')} on {node} ({exc})")
        for w in vm.written:
            target = w.final if w.renamed else w.temp
            try:
                self.storage.delete(target, missing_ok=True)
            except BareosHyperVError as exc:
                left.append(f"file {w.final_path} ({exc})")
        if vm.staging_created and plan is not None and not self._remove_staging(vm):
            left.append(f"staging folder {plan.staging_folder}")
        vm.written.clear()
        return ", ".join(left)

    def _remove_staging(self, vm: _Vm) -> bool:
        plan = vm.plan
        if plan is None:
            return True
        try:
            remove_tree(self.storage, self.resolver.resolve(plan.staging_folder, plan.node))
            vm.staging_created = False
            vm.written = [w for w in vm.written if not w.final_path.startswith(plan.staging_folder)]
            return True
        except BareosHyperVError as exc:
            log.warning("%s: could not remove the staging folder %s: %s", vm.label, plan.staging_folder, exc)
            return False

    def pending_cleanup(self, host: str, job_id: int) -> Optional[CleanupRecord]:
        """What a fresh agent must remove if this one died now (None: nothing).

        Files are ``NODE|file|path`` or ``NODE|dir|path`` entries; a planned VM of
        ``planned_name`` on ``node`` is this job's while an import is under way.
        """
        files: List[str] = []
        planned_name = ""
        node = ""
        for vm in self.vms.values():
            plan = vm.plan
            if plan is None or vm.done:
                continue
            for w in vm.written:
                files.append(f"{plan.node}|file|{w.final_path if w.renamed else w.temp_path}")
            if vm.staging_created:
                files.append(f"{plan.node}|dir|{plan.staging_folder}")
            if vm.planned_before is not None and vm.realized is None:
                planned_name, node = vm.manifest.vm.ref.name, plan.node
        if not files and not planned_name:
            return None
        return CleanupRecord(host=host, node=node, vm_guid="", vm_name=planned_name, job_id=job_id, restore=True,
                             files=files, planned_name=planned_name)

    def abort(self) -> None:
        """The job ends without finish (error, cancel): undo every VM's work (best effort)."""
        # A stop (SIGTERM) can interrupt a request mid-message, which leaves its connection
        # unusable (an NTLM-sealed HTTP exchange or an SMB credit window out of step): start clean.
        self.connector.close()
        self.storage.close()
        for vm in self.vms.values():
            if vm.written or vm.staging_created or vm.planned or vm.realized or vm.planned_before is not None:
                left = self._undo(vm)
                if left:
                    log.error("%s: left behind after the restore stopped: %s", vm.label, left)
                else:
                    log.warning("%s: the restore stopped; everything it had created was removed", vm.label)


def undo_record(record: CleanupRecord, connector: Connector, storage: Storage, resolver: LocationResolver, *,
                timeout: float) -> Optional[CleanupRecord]:
    """Cleanup agent: remove what a dead restore agent left (its record); returns what is still left."""
    left: List[str] = []
    for entry in record.files:
        node, kind, path = entry.split("|", 2)
        try:
            location = resolver.resolve(path, node)
            if kind == "dir":
                remove_tree(storage, location)
            else:
                storage.delete(location, missing_ok=True)
            log.info("removed %s %s on %s that the stopped restore had written", kind, path, node)
        except BareosHyperVError as exc:
            log.error("could not remove %s on %s: %s", path, node, exc)
            left.append(entry)
    planned_left = ""
    if record.planned_name and record.node:
        try:
            importer = VmImporter(connector.client(record.node), record.node, timeout=timeout)
            for planned in importer.planned_systems():
                if planned.name == record.planned_name:
                    importer.destroy_planned(planned)
                    log.info("removed the planned VM '%s' (%s) on %s", planned.name, planned.guid, record.node)
        except BareosHyperVError as exc:
            log.error("could not remove the planned VM '%s' on %s: %s", record.planned_name, record.node, exc)
            planned_left = record.planned_name
    if not left and not planned_left:
        return None
    return dataclasses.replace(record, files=left, planned_name=planned_left)

