"""The backup manifest (``manifest.xml``): the dataclass tree, its XML form and the schema check.

One manifest per VM and job, stored first in the VM's save-set tree.  It holds

* ``backup``   - level, job id, time (UTC), consistency asked and achieved, checkpoint,
  reference points with their RCT ids, plugin version, every save-set part with size and SHA-256;
* ``vm``       - the normalised configuration (``VmConfig``) plus ``controllers``;
* ``disks``    - per disk drive: its file chain (format, type, sizes, parent, file size, SHA-256)
  or why it was not backed up;
* ``host`` / ``cluster`` - the facts restore planning compares with the destination;
* ``settings`` - the VM's system settings and every resource allocation setting as captured
  CIM-XML, kept byte for byte.

Schema: ``manifest.xsd`` next to this module, namespace ``urn:bareos-hyperv:manifest:<major>``,
root attribute ``version="<major>.<minor>"``.  Both :func:`to_xml` and :func:`from_xml` validate.

Compatibility rule (decided here, mirrored in the XSD header):

* A reader refuses a manifest of another major version with a message that says to use a
  bareos-hyperv at least as new as the one that wrote it.
* A minor version only adds optional content: attributes, or elements appended after an
  element's existing children, in a namespace other than the major's (convention
  :data:`EXTENSION_NAMESPACE`).  Every complex type ends with ``##other`` lax wildcards, so a
  reader of an older minor validates such a manifest and ignores the additions (they are not
  kept in the dataclass tree).  Content an older reader must understand to restore
  correctly requires a new major version.
* :func:`to_xml` always writes :data:`SCHEMA_VERSION`.

Captured settings are stored as the element's text: a CDATA section when that keeps the text
exact, escaped character data when the text holds ``]]>`` or carriage returns (a CDATA section
would lose ``\\r``), and base64 of the UTF-8 bytes when the text holds characters XML 1.0 cannot
carry.  The ``sha256`` attribute of each payload is checked on read, so a payload that does not
come back byte for byte is an error rather than a silent change.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar, cast

from lxml import etree

from bareos_hyperv.errors import ManifestError
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
    ReferencePoint,
    SaveSetPart,
)
from bareos_hyperv.model.cluster import ClusterFacts, ClusterNode, NodeState, SharedVolume, VmGroup
from bareos_hyperv.model.disk import DiskFormat, DiskType, VirtualDiskInfo
from bareos_hyperv.model.host import HostFacts, Switch
from bareos_hyperv.model.vm import (
    ControllerKind,
    Drive,
    DriveKind,
    DriveSlot,
    Generation,
    NetworkAdapter,
    PowerState,
    VmConfig,
    VmRef,
)

NAMESPACE_PREFIX = "urn:bareos-hyperv:manifest:"
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 2  # 1.2: disks/disk/file/@x:sha256In, backup/@x:noReferencePoint, backup/@x:exportBackupIntent
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"
NAMESPACE = f"{NAMESPACE_PREFIX}{SCHEMA_MAJOR}"
EXTENSION_NAMESPACE = f"{NAMESPACE}:ext"  # where minor versions put what they add
SCHEMA_RESOURCE = "manifest.xsd"

# What restore should do when the manifest it got cannot be used.
_READ_ADVICE = (
    "the manifest in this save set is damaged or was not written by bareos-hyperv: restore another "
    "backup job of this VM, or restore the files alone with restore_local=yes"
)
_WRITE_ADVICE = (
    "a value Hyper-V reported cannot be stored in the manifest, or bareos-hyperv has a bug: "
    "report this message to the bareos-hyperv maintainers"
)

# XML 1.0 Char production: anything else cannot be carried as character data.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_VERSION = re.compile(r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_UTC_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z$")

_FORMAT_NAMES = {DiskFormat.VHD: "VHD", DiskFormat.VHDX: "VHDX", DiskFormat.VHDSET: "VHDSet"}
_TYPE_NAMES = {DiskType.FIXED: "Fixed", DiskType.DYNAMIC: "Dynamic", DiskType.DIFFERENCING: "Differencing"}

_E = TypeVar("_E")
_NSMAP: Dict[Any, str] = {None: NAMESPACE, "x": EXTENSION_NAMESPACE}  # lxml-stubs only allow str prefixes


@dataclass
class VmSettings:
    """The VM's settings objects as captured: the system settings and every resource allocation setting."""

    system: CapturedSettings
    resources: list[CapturedSettings] = field(default_factory=list)


@dataclass
class Manifest:
    """Everything one backup of one VM records (see module docstring).

    ``disks`` refer to drives of ``vm.drives`` by ``settings_id``; save-set parts refer to
    disk files by ``DiskFile.index``.  ``version`` is the schema version the manifest was
    read with (a newer minor's extensions are not kept); :func:`to_xml` writes
    :data:`SCHEMA_VERSION` whatever it says.
    """

    backup: BackupFacts
    vm: VmConfig
    host: HostFacts
    settings: VmSettings
    controllers: list[Controller] = field(default_factory=list)
    disks: list[DiskBackup] = field(default_factory=list)
    cluster: Optional[ClusterFacts] = None
    version: str = SCHEMA_VERSION


# --------------------------------------------------------------------------- schema


_schema_cache: Dict[str, etree.XMLSchema] = {}


def schema() -> etree.XMLSchema:
    """The manifest XSD shipped in this package, loaded once."""
    cached = _schema_cache.get(SCHEMA_RESOURCE)
    if cached is None:
        data = resources.files(__package__ or "bareos_hyperv.manifest").joinpath(SCHEMA_RESOURCE).read_bytes()
        cached = etree.XMLSchema(etree.fromstring(data, parser=_parser()))
        _schema_cache[SCHEMA_RESOURCE] = cached
    return cached


def _parser() -> etree.XMLParser:
    # No entities, no network, no DTD: a manifest comes from a save set, which is input.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True, huge_tree=False
    )


def _schema_problems(root: etree._Element) -> List[str]:
    checker = schema()
    if checker.validate(root):
        return []
    problems = []
    # lxml-stubs do not declare _ErrorLog iterable; its entries are _LogEntry (line, message).
    for entry in cast("Iterable[Any]", checker.error_log):
        message = entry.message.replace(f"{{{NAMESPACE}}}", "").rstrip(".")
        problems.append(f"line {entry.line}: {message}")
    return problems


# --------------------------------------------------------------------------- writing


def to_xml(manifest: Manifest) -> bytes:
    """Serialise a manifest as UTF-8 XML (schema version :data:`SCHEMA_VERSION`) and validate it.

    :raises ManifestError: a value cannot be stored (naive time, text XML cannot carry,
        a value outside the schema, a part that names no disk file, ...); the message names it.
    """
    what = f"the manifest of VM {manifest.vm.ref} for job {manifest.backup.job_id}"
    _check_semantics(manifest, what, reading=False)
    root = etree.Element(_q("manifest"), nsmap=_NSMAP)
    _set(root, "version", SCHEMA_VERSION)
    _write_backup(root, manifest.backup)
    _write_vm(root, manifest.vm, manifest.controllers)
    _write_disks(root, manifest.disks)
    _write_host(root, manifest.host)
    if manifest.cluster is not None:
        _write_cluster(root, manifest.cluster)
    _write_settings(root, manifest.settings)
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    # Validate what a reader will see (the serialised bytes), so error lines are real lines.
    problems = _schema_problems(etree.fromstring(data, parser=_parser()))
    if problems:
        raise ManifestError(
            f"{what} does not match the manifest schema {SCHEMA_VERSION}: {'; '.join(problems[:3])}",
            what_to_do=_WRITE_ADVICE,
        )
    return data


def _q(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def _safe(value: str, where: str) -> str:
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        raise ManifestError(
            f"the manifest cannot hold {where} {value!r}: character U+{ord(bad.group()):04X} is not allowed in XML",
            what_to_do=_WRITE_ADVICE,
        )
    return value


def _set(element: etree._Element, name: str, value: object) -> None:
    """Set an attribute; ``None`` leaves it out, bools become xs:boolean text."""
    if value is None:
        return
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    element.set(name, _safe(text, f"{etree.QName(element).localname}/@{name}"))


def _sub(parent: etree._Element, tag: str, text: object = None, **attributes: object) -> etree._Element:
    """Append a child element with optional text (bools as xs:boolean) and attributes (None omitted)."""
    child = etree.SubElement(parent, _q(tag))
    if text is not None:
        value = ("true" if text else "false") if isinstance(text, bool) else str(text)
        child.text = _safe(value, tag)
    for name, attribute in attributes.items():
        _set(child, name, attribute)
    return child


def _x(name: str) -> str:
    """An attribute or element name in the extension namespace (what minor versions 1.1 and later added)."""
    return f"{{{EXTENSION_NAMESPACE}}}{name}"


def _utc_text(value: datetime, where: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ManifestError(
            f"{where} {value.isoformat()} has no time zone, so it cannot be written as UTC",
            what_to_do="pass a timezone-aware datetime (e.g. datetime.now(timezone.utc))",
        )
    utc = value.astimezone(timezone.utc)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def _write_reference_point(parent: etree._Element, tag: str, point: Optional[ReferencePoint]) -> None:
    if point is None:
        return
    element = _sub(parent, tag, id=point.instance_id, jobId=point.job_id)
    for entry in point.rct:
        _sub(element, "rct", virtualDiskId=entry.virtual_disk_id, rctId=entry.rct_id)


def _write_backup(root: etree._Element, backup: BackupFacts) -> None:
    element = _sub(
        root,
        "backup",
        level=backup.level.value,
        jobId=backup.job_id,
        time=_utc_text(backup.time, "backup time"),
    )
    consistency = _sub(
        element,
        "consistency",
        requested=backup.consistency_requested.value,
        achieved=backup.consistency_achieved.value,
    )
    _set(consistency, _x("source"), backup.consistency_source)
    _sub(element, "pluginVersion", backup.plugin_version)
    if backup.checkpoint_id is not None:
        _sub(element, "checkpointId", backup.checkpoint_id)
    _set(element, _x("baseJobId"), backup.base_job_id)
    _set(element, _x("nextFileIndex"), backup.next_file_index)
    if backup.since is not None:
        _set(element, _x("since"), _utc_text(backup.since, "since time"))
    _set(element, _x("noReferencePoint"), backup.no_reference_point)
    _set(element, _x("exportBackupIntent"), backup.export_backup_intent)
    _write_reference_point(element, "referencePoint", backup.reference_point)
    _write_reference_point(element, "previousReferencePoint", backup.previous_reference_point)
    parts = _sub(element, "parts")
    for part in backup.parts:
        child = _sub(
            parts,
            "part",
            kind=part.kind.value,
            name=part.name,
            size=part.size,
            sha256=part.sha256,
            fileIndex=part.file_index,
            source=part.source,
            baseJobId=part.base_job_id,
        )
        _set(child, _x("baseDigest"), part.base_digest)
        _set(child, _x("resultDigest"), part.result_digest)
        _set(child, _x("method"), None if part.method is None else part.method.value)
    warnings = _sub(element, "warnings")
    for warning in backup.warnings:
        _sub(warnings, "warning", warning)


def _write_vm(root: etree._Element, vm: VmConfig, controllers: List[Controller]) -> None:
    element = _sub(root, "vm", guid=vm.ref.guid, name=vm.ref.name)
    _sub(element, "generation", int(vm.generation))
    _sub(element, "configVersion", vm.version)
    _sub(element, "state", vm.state.value)
    _sub(element, "processors", vm.processors)
    _sub(element, "memoryMB", vm.memory_mb)
    _sub(element, "dynamicMemory", vm.dynamic_memory)
    _sub(element, "configRoot", vm.config_root)
    _sub(element, "snapshotRoot", vm.snapshot_root)
    if vm.secure_boot is not None:
        _sub(element, "secureBoot", vm.secure_boot)
    _sub(element, "notes", vm.notes)
    group = _sub(element, "controllers")
    for controller in controllers:
        _sub(group, "controller", kind=controller.kind.value, index=controller.index, settingsId=controller.settings_id)
    group = _sub(element, "drives")
    for drive in vm.drives:
        child = _sub(
            group,
            "drive",
            kind=drive.kind.value,
            controller=drive.slot.controller.value,
            controllerIndex=drive.slot.controller_index,
            location=drive.slot.location,
            settingsId=drive.settings_id,
        )
        if drive.path is not None:
            _sub(child, "path", drive.path)
        if drive.host_resource is not None:
            _sub(child, "hostResource", drive.host_resource)
    group = _sub(element, "adapters")
    for adapter in vm.adapters:
        child = _sub(
            group,
            "adapter",
            name=adapter.name,
            mac=adapter.mac,
            staticMac=adapter.static_mac,
            legacy=adapter.legacy,
            connected=adapter.connected,
            settingsId=adapter.settings_id,
        )
        if adapter.switch_name is not None:
            _sub(child, "switchName", adapter.switch_name)
        if adapter.switch_id is not None:
            _sub(child, "switchId", adapter.switch_id)


def _write_disks(root: etree._Element, disks: List[DiskBackup]) -> None:
    element = _sub(root, "disks")
    for disk in disks:
        child = _sub(element, "disk", settingsId=disk.settings_id)
        if disk.not_backed_up is not None:
            _sub(child, "notBackedUp", disk.not_backed_up)
        for file in disk.chain:
            info = file.info
            written = _sub(
                child,
                "file",
                index=file.index,
                path=info.path,
                format=_FORMAT_NAMES[info.format],
                type=_TYPE_NAMES[info.type],
                virtualSize=info.virtual_size,
                blockSize=info.block_size,
                logicalSectorSize=info.logical_sector_size,
                physicalSectorSize=info.physical_sector_size,
                fileSize=file.file_size,
                sha256=file.sha256,
                parentPath=info.parent_path,
                diskId=info.disk_id,
            )
            _set(written, _x("imageDigest"), file.image_digest)
            _set(written, _x("chunkSize"), file.chunk_size)
            _set(written, _x("sha256In"), file.sha256_in)
        # Extensions come after the element's own children (the schema's wildcard).
        for file in disk.chain:
            if not file.chain:
                continue
            chain = etree.SubElement(child, _x("chain"))
            _set(chain, "fileIndex", file.index)
            for link in file.chain:
                step = etree.SubElement(chain, _x("part"))
                _set(step, "jobId", link.job_id)
                _set(step, "name", link.name)
                _set(step, "kind", link.kind.value)
                _set(step, "imageDigest", link.image_digest)


def _write_host(root: etree._Element, host: HostFacts) -> None:
    element = _sub(root, "host", name=host.name)
    _sub(element, "osVersion", host.os_version)
    versions = _sub(element, "supportedConfigVersions")
    for version in host.supported_config_versions:
        _sub(versions, "version", version)
    _sub(element, "defaultVhdPath", host.default_vhd_path)
    _sub(element, "defaultVmPath", host.default_vm_path)
    switches = _sub(element, "switches")
    for switch in host.switches:
        _sub(switches, "switch", name=switch.name, guid=switch.guid)


def _write_cluster(root: etree._Element, cluster: ClusterFacts) -> None:
    element = _sub(
        root, "cluster", name=cluster.name, fqdn=cluster.fqdn, sharedVolumesRoot=cluster.shared_volumes_root
    )
    nodes = _sub(element, "nodes")
    for node in cluster.nodes:
        _sub(nodes, "node", name=node.name, state=node.state.name.lower())
    volumes = _sub(element, "sharedVolumes")
    for volume in cluster.volumes:
        _sub(
            volumes,
            "volume",
            name=volume.name,
            path=volume.path,
            totalBytes=volume.total_bytes,
            freeBytes=volume.free_bytes,
            ownerNode=volume.owner_node,
        )
    groups = _sub(element, "groups")
    for group in cluster.groups:
        child = _sub(
            groups, "group", name=group.name, vmGuid=group.vm_guid, ownerNode=group.owner_node, state=group.state
        )
        for owner in group.preferred_owners:
            _sub(child, "preferredOwner", owner)
        for resource in group.resources:
            _sub(child, "resource", resource)


def _write_payload(parent: etree._Element, tag: str, captured: CapturedSettings) -> None:
    text = captured.cimxml
    raw = text.encode("utf-8", "surrogatepass")
    element = _sub(parent, tag)
    _set(element, "class", captured.class_name)
    _set(element, "instanceId", captured.instance_id)
    if _NOT_XML_CHAR.search(text) is None:
        _set(element, "encoding", "text")
        # CDATA keeps the CIM-XML readable; it cannot hold "]]>" and parsers turn its \r into \n.
        if text and "]]>" not in text and "\r" not in text:
            element.text = cast(str, etree.CDATA(text))  # lxml accepts CDATA objects as text
        else:
            element.text = text
    else:
        _set(element, "encoding", "base64")
        element.text = base64.b64encode(raw).decode("ascii")
    _set(element, "sha256", hashlib.sha256(raw).hexdigest())


def _write_settings(root: etree._Element, settings: VmSettings) -> None:
    element = _sub(root, "settings")
    _write_payload(element, "system", settings.system)
    for captured in settings.resources:
        _write_payload(element, "resource", captured)


def _check_semantics(manifest: Manifest, what: str, *, reading: bool) -> None:
    """Rules the XSD cannot state (conditional attributes); the same on write and read."""
    advice = _READ_ADVICE if reading else _WRITE_ADVICE
    for part in manifest.backup.parts:
        needs_file = part.kind in (PartKind.DISK, PartKind.DELTA)
        if needs_file and part.file_index is None:
            raise ManifestError(
                f"{what}: {part.kind.value} part {part.name!r} names no disk file (fileIndex)", what_to_do=advice
            )
        if part.kind is PartKind.DELTA and part.base_job_id is None:
            raise ManifestError(
                f"{what}: delta part {part.name!r} does not say which job's image it applies to (baseJobId)",
                what_to_do=advice,
            )
        if part.kind is not PartKind.DELTA and part.base_job_id is not None:
            raise ManifestError(
                f"{what}: {part.kind.value} part {part.name!r} has a baseJobId, which only deltas have",
                what_to_do=advice,
            )
    for disk in manifest.disks:
        if (disk.not_backed_up is None) == (not disk.chain):
            raise ManifestError(
                f"{what}: disk {disk.settings_id!r} must have either a file chain or a reason it was not backed up",
                what_to_do=advice,
            )


# --------------------------------------------------------------------------- reading


def from_xml(data: bytes, *, source: str) -> Manifest:
    """Parse and validate a manifest; ``source`` names it in errors (save-set path or file name).

    :raises ManifestError: not well-formed, not a bareos-hyperv manifest, a newer major
        version, not valid against the schema, or a settings payload whose SHA-256 does not
        match; the message names ``source``, the line and the element.
    """
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser=_parser()))
    except etree.XMLSyntaxError as exc:
        raise ManifestError(
            f"manifest {source} is not well-formed XML: {exc}", what_to_do=_READ_ADVICE, context={"file": source}
        ) from None
    if getattr(tree.docinfo, "doctype", ""):
        raise ManifestError(
            f"manifest {source} has a DOCTYPE declaration, which bareos-hyperv never writes",
            what_to_do=_READ_ADVICE,
        )
    root = tree.getroot()
    version = _check_version(root, source)
    problems = _schema_problems(root)
    if problems:
        hint = _READ_ADVICE
        if int(version.split(".")[1]) > SCHEMA_MINOR:
            hint = (
                f"it is version {version}, newer than this reader ({SCHEMA_VERSION}) and not readable by it: "
                "restore with a bareos-hyperv at least as new as the one that made the backup"
            )
        raise ManifestError(
            f"manifest {source} does not match the manifest schema {SCHEMA_VERSION}: {'; '.join(problems[:3])}",
            what_to_do=hint,
        )
    reader = _Reader(source)
    manifest = reader.manifest(root, version)
    _check_semantics(manifest, f"manifest {source}", reading=True)
    return manifest


def _check_version(root: etree._Element, source: str) -> str:
    qname = etree.QName(root)
    namespace = qname.namespace or ""
    if qname.localname != "manifest" or not namespace.startswith(NAMESPACE_PREFIX):
        raise ManifestError(
            f"{source} is not a bareos-hyperv manifest (root element {root.tag!r})",
            what_to_do=f"the root must be <manifest xmlns=\"{NAMESPACE}\">; {_READ_ADVICE}",
        )
    version = root.get("version") or ""
    match = _VERSION.match(version)
    ns_major = namespace[len(NAMESPACE_PREFIX) :]
    if match is None or ns_major != match.group(1):
        raise ManifestError(
            f"manifest {source} has version {version!r} in namespace {namespace!r}; "
            "expected version=\"<major>.<minor>\" with the major of the namespace",
            what_to_do=_READ_ADVICE,
        )
    major = int(match.group(1))
    if major > SCHEMA_MAJOR:
        raise ManifestError(
            f"manifest {source} is version {version}, written by a newer bareos-hyperv; "
            f"this one reads manifest version {SCHEMA_MAJOR}.x only",
            what_to_do="restore with a bareos-hyperv at least as new as the one that made the backup "
            "(upgrade the plugin on this file daemon)",
        )
    if major < SCHEMA_MAJOR:
        raise ManifestError(
            f"manifest {source} is version {version}, which no released bareos-hyperv wrote",
            what_to_do=_READ_ADVICE,
        )
    return version


class _Reader:
    """Turns a validated manifest tree into the dataclass tree; errors name the source and line."""

    def __init__(self, source: str) -> None:
        self.source = source

    # ------------------------------------------------------------ primitives

    def fail(self, element: etree._Element, problem: str) -> ManifestError:
        return ManifestError(
            f"manifest {self.source}, line {element.sourceline}, element {etree.QName(element).localname}: {problem}",
            what_to_do=_READ_ADVICE,
        )

    def one(self, parent: etree._Element, tag: str) -> etree._Element:
        found = parent.find(_q(tag))
        if found is None:
            raise self.fail(parent, f"has no {tag} element")
        return found

    def opt(self, parent: etree._Element, tag: str) -> Optional[etree._Element]:
        return parent.find(_q(tag))

    def each(self, parent: etree._Element, *path: str) -> Iterator[etree._Element]:
        return iter(parent.findall("/".join(_q(tag) for tag in path)))

    def text(self, parent: etree._Element, tag: str) -> str:
        return self.one(parent, tag).text or ""

    def opt_text(self, parent: etree._Element, tag: str) -> Optional[str]:
        found = self.opt(parent, tag)
        return None if found is None else (found.text or "")

    def attr(self, element: etree._Element, name: str) -> str:
        value = element.get(name)
        if value is None:
            raise self.fail(element, f"has no {name} attribute")
        return value

    def opt_attr(self, element: etree._Element, name: str) -> Optional[str]:
        return element.get(name)

    def int_of(self, element: etree._Element, text: str, what: str) -> int:
        try:
            return int(text.strip())
        except ValueError:
            raise self.fail(element, f"{what} {text!r} is not an integer") from None

    def int_attr(self, element: etree._Element, name: str) -> int:
        return self.int_of(element, self.attr(element, name), name)

    def opt_int_attr(self, element: etree._Element, name: str) -> Optional[int]:
        value = element.get(name)
        return None if value is None else self.int_of(element, value, name)

    def int_text(self, parent: etree._Element, tag: str) -> int:
        element = self.one(parent, tag)
        return self.int_of(element, element.text or "", tag)

    def digest_of(self, element: etree._Element, text: str, what: str) -> str:
        # Extension attributes are not checked by the schema (lax wildcard), so here.
        if not _DIGEST.match(text):
            raise self.fail(element, f"{what} {text!r} is not a SHA-256 in lower-case hex")
        return text

    def opt_digest(self, element: etree._Element, name: str) -> Optional[str]:
        value = element.get(name)
        return None if value is None else self.digest_of(element, value, etree.QName(name).localname)

    def bool_of(self, element: etree._Element, text: str, what: str) -> bool:
        value = text.strip()
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise self.fail(element, f"{what} {text!r} is not true or false")

    def bool_attr(self, element: etree._Element, name: str) -> bool:
        return self.bool_of(element, self.attr(element, name), name)

    def bool_text(self, parent: etree._Element, tag: str) -> bool:
        element = self.one(parent, tag)
        return self.bool_of(element, element.text or "", tag)

    def enum_of(self, element: etree._Element, text: str, convert: Callable[[str], _E], what: str) -> _E:
        try:
            return convert(text.strip())
        except (KeyError, ValueError):
            raise self.fail(element, f"{what} {text!r} is not a known value") from None

    def time_attr(self, element: etree._Element, name: str) -> datetime:
        text = self.attr(element, name)
        match = _UTC_TIME.match(text)
        if match is None:
            raise self.fail(element, f"{name} {text!r} is not a UTC time like 2025-01-31T22:05:00Z")
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        micro = int((match.group(7) or "0").ljust(6, "0"))
        try:
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone.utc)
        except ValueError as exc:
            raise self.fail(element, f"{name} {text!r}: {exc}") from None

    # ------------------------------------------------------------ sections

    def manifest(self, root: etree._Element, version: str) -> Manifest:
        vm_element = self.one(root, "vm")
        cluster = self.opt(root, "cluster")
        return Manifest(
            backup=self.backup(self.one(root, "backup")),
            vm=self.vm(vm_element),
            controllers=[self.controller(c) for c in self.each(vm_element, "controllers", "controller")],
            disks=[self.disk(d) for d in self.each(root, "disks", "disk")],
            host=self.host(self.one(root, "host")),
            cluster=None if cluster is None else self.cluster(cluster),
            settings=self.settings(self.one(root, "settings")),
            version=version,
        )

    def reference_point(self, element: Optional[etree._Element]) -> Optional[ReferencePoint]:
        if element is None:
            return None
        entries = tuple(
            RctEntry(virtual_disk_id=self.attr(e, "virtualDiskId"), rct_id=self.attr(e, "rctId"))
            for e in self.each(element, "rct")
        )
        return ReferencePoint(
            instance_id=self.attr(element, "id"), rct=entries, job_id=self.opt_int_attr(element, "jobId")
        )

    def backup(self, element: etree._Element) -> BackupFacts:
        consistency = self.one(element, "consistency")
        return BackupFacts(
            level=self.enum_of(element, self.attr(element, "level"), BackupLevel, "level"),
            job_id=self.int_attr(element, "jobId"),
            time=self.time_attr(element, "time"),
            consistency_requested=self.enum_of(
                consistency, self.attr(consistency, "requested"), ConsistencyMode, "requested consistency"
            ),
            consistency_achieved=self.enum_of(
                consistency, self.attr(consistency, "achieved"), Consistency, "achieved consistency"
            ),
            consistency_source=self.opt_attr(consistency, _x("source")),
            plugin_version=self.text(element, "pluginVersion"),
            checkpoint_id=self.opt_text(element, "checkpointId"),
            reference_point=self.reference_point(self.opt(element, "referencePoint")),
            previous_reference_point=self.reference_point(self.opt(element, "previousReferencePoint")),
            no_reference_point=self.opt_attr(element, _x("noReferencePoint")),
            export_backup_intent=self.opt_int_attr(element, _x("exportBackupIntent")),
            parts=[self.part(p) for p in self.each(element, "parts", "part")],
            warnings=[w.text or "" for w in self.each(element, "warnings", "warning")],
            base_job_id=self.opt_int_attr(element, _x("baseJobId")),
            next_file_index=self.opt_int_attr(element, _x("nextFileIndex")),
            since=None if element.get(_x("since")) is None else self.time_attr(element, _x("since")),
        )

    def part(self, element: etree._Element) -> SaveSetPart:
        return SaveSetPart(
            kind=self.enum_of(element, self.attr(element, "kind"), PartKind, "part kind"),
            name=self.attr(element, "name"),
            size=self.int_attr(element, "size"),
            sha256=self.attr(element, "sha256"),
            file_index=self.opt_int_attr(element, "fileIndex"),
            source=self.opt_attr(element, "source"),
            base_job_id=self.opt_int_attr(element, "baseJobId"),
            base_digest=self.opt_digest(element, _x("baseDigest")),
            result_digest=self.opt_digest(element, _x("resultDigest")),
            method=None if element.get(_x("method")) is None
            else self.enum_of(element, self.attr(element, _x("method")), DeltaMethod, "delta method"),
        )

    def vm(self, element: etree._Element) -> VmConfig:
        secure_boot = self.opt(element, "secureBoot")
        generation = self.one(element, "generation")
        state = self.one(element, "state")
        return VmConfig(
            ref=VmRef(guid=self.attr(element, "guid"), name=self.attr(element, "name")),
            generation=self.enum_of(
                generation, generation.text or "", lambda t: Generation(int(t)), "generation"
            ),
            version=self.text(element, "configVersion"),
            state=self.enum_of(state, state.text or "", PowerState, "state"),
            processors=self.int_text(element, "processors"),
            memory_mb=self.int_text(element, "memoryMB"),
            dynamic_memory=self.bool_text(element, "dynamicMemory"),
            config_root=self.text(element, "configRoot"),
            snapshot_root=self.text(element, "snapshotRoot"),
            drives=[self.drive(d) for d in self.each(element, "drives", "drive")],
            adapters=[self.adapter(a) for a in self.each(element, "adapters", "adapter")],
            secure_boot=(
                None if secure_boot is None else self.bool_of(secure_boot, secure_boot.text or "", "secureBoot")
            ),
            notes=self.text(element, "notes"),
        )

    def controller(self, element: etree._Element) -> Controller:
        return Controller(
            kind=self.enum_of(element, self.attr(element, "kind"), ControllerKind, "controller kind"),
            index=self.int_attr(element, "index"),
            settings_id=self.attr(element, "settingsId"),
        )

    def drive(self, element: etree._Element) -> Drive:
        return Drive(
            kind=self.enum_of(element, self.attr(element, "kind"), DriveKind, "drive kind"),
            slot=DriveSlot(
                controller=self.enum_of(element, self.attr(element, "controller"), ControllerKind, "controller"),
                controller_index=self.int_attr(element, "controllerIndex"),
                location=self.int_attr(element, "location"),
            ),
            path=self.opt_text(element, "path"),
            settings_id=self.attr(element, "settingsId"),
            host_resource=self.opt_text(element, "hostResource"),
        )

    def adapter(self, element: etree._Element) -> NetworkAdapter:
        return NetworkAdapter(
            name=self.attr(element, "name"),
            mac=self.attr(element, "mac"),
            static_mac=self.bool_attr(element, "staticMac"),
            legacy=self.bool_attr(element, "legacy"),
            switch_name=self.opt_text(element, "switchName"),
            switch_id=self.opt_text(element, "switchId"),
            connected=self.bool_attr(element, "connected"),
            settings_id=self.attr(element, "settingsId"),
        )

    def disk(self, element: etree._Element) -> DiskBackup:
        chains: Dict[int, tuple[ChainPart, ...]] = {}
        for chain in element.findall(_x("chain")):
            chains[self.int_attr(chain, "fileIndex")] = tuple(
                ChainPart(
                    job_id=self.int_attr(step, "jobId"),
                    name=self.attr(step, "name"),
                    kind=self.enum_of(step, self.attr(step, "kind"), PartKind, "part kind"),
                    image_digest=self.digest_of(step, self.attr(step, "imageDigest"), "imageDigest"),
                )
                for step in chain.findall(_x("part"))
            )
        files = [self.disk_file(f) for f in self.each(element, "file")]
        return DiskBackup(
            settings_id=self.attr(element, "settingsId"),
            chain=[dataclasses.replace(f, chain=chains.get(f.index, ())) for f in files],
            not_backed_up=self.opt_text(element, "notBackedUp"),
        )

    def disk_file(self, element: etree._Element) -> DiskFile:
        formats = {v: k for k, v in _FORMAT_NAMES.items()}
        types = {v: k for k, v in _TYPE_NAMES.items()}
        info = VirtualDiskInfo(
            path=self.attr(element, "path"),
            format=self.enum_of(element, self.attr(element, "format"), formats.__getitem__, "format"),
            type=self.enum_of(element, self.attr(element, "type"), types.__getitem__, "type"),
            virtual_size=self.int_attr(element, "virtualSize"),
            block_size=self.int_attr(element, "blockSize"),
            logical_sector_size=self.int_attr(element, "logicalSectorSize"),
            physical_sector_size=self.int_attr(element, "physicalSectorSize"),
            parent_path=self.opt_attr(element, "parentPath"),
            disk_id=self.opt_attr(element, "diskId"),
        )
        return DiskFile(
            index=self.int_attr(element, "index"),
            info=info,
            file_size=self.int_attr(element, "fileSize"),
            sha256=self.opt_attr(element, "sha256"),
            image_digest=self.opt_digest(element, _x("imageDigest")),
            chunk_size=self.opt_int_attr(element, _x("chunkSize")),
            sha256_in=self.opt_attr(element, _x("sha256In")),
        )

    def host(self, element: etree._Element) -> HostFacts:
        return HostFacts(
            name=self.attr(element, "name"),
            os_version=self.text(element, "osVersion"),
            supported_config_versions=[v.text or "" for v in self.each(element, "supportedConfigVersions", "version")],
            default_vhd_path=self.text(element, "defaultVhdPath"),
            default_vm_path=self.text(element, "defaultVmPath"),
            switches=[
                Switch(name=self.attr(s, "name"), guid=self.attr(s, "guid"))
                for s in self.each(element, "switches", "switch")
            ],
        )

    def cluster(self, element: etree._Element) -> ClusterFacts:
        return ClusterFacts(
            name=self.attr(element, "name"),
            fqdn=self.attr(element, "fqdn"),
            shared_volumes_root=self.attr(element, "sharedVolumesRoot"),
            nodes=[
                ClusterNode(
                    name=self.attr(n, "name"),
                    state=self.enum_of(n, self.attr(n, "state"), lambda t: NodeState[t.upper()], "node state"),
                )
                for n in self.each(element, "nodes", "node")
            ],
            volumes=[
                SharedVolume(
                    name=self.attr(v, "name"),
                    path=self.attr(v, "path"),
                    total_bytes=self.int_attr(v, "totalBytes"),
                    free_bytes=self.int_attr(v, "freeBytes"),
                    owner_node=self.opt_attr(v, "ownerNode"),
                )
                for v in self.each(element, "sharedVolumes", "volume")
            ],
            groups=[self.group(g) for g in self.each(element, "groups", "group")],
        )

    def group(self, element: etree._Element) -> VmGroup:
        return VmGroup(
            name=self.attr(element, "name"),
            vm_guid=self.opt_attr(element, "vmGuid"),
            owner_node=self.attr(element, "ownerNode"),
            state=self.int_attr(element, "state"),
            preferred_owners=tuple(p.text or "" for p in self.each(element, "preferredOwner")),
            resources=tuple(r.text or "" for r in self.each(element, "resource")),
        )

    def payload(self, element: etree._Element) -> CapturedSettings:
        encoding = self.attr(element, "encoding")
        body = element.text or ""
        if encoding == "base64":
            try:
                raw = base64.b64decode("".join(body.split()), validate=True)
                text = raw.decode("utf-8", "surrogatepass")
            except (binascii.Error, ValueError) as exc:
                raise self.fail(element, f"base64 payload cannot be decoded: {exc}") from None
        else:
            text = body
            raw = text.encode("utf-8", "surrogatepass")
        class_name = self.attr(element, "class")
        expected = self.attr(element, "sha256")
        if hashlib.sha256(raw).hexdigest() != expected:
            raise self.fail(
                element,
                f"the captured {class_name} settings do not match their SHA-256 {expected}: the text was changed",
            )
        return CapturedSettings(class_name=class_name, instance_id=self.attr(element, "instanceId"), cimxml=text)

    def settings(self, element: etree._Element) -> VmSettings:
        return VmSettings(
            system=self.payload(self.one(element, "system")),
            resources=[self.payload(r) for r in self.each(element, "resource")],
        )

