"""Where each file of a VM's backup sits in the Bareos save set, and the way back.

Layout (``DESIGN.md`` "Save-set layout"), one tree per VM, manifest first::

    @hyperv/<scope>/<vm>/manifest.xml
    @hyperv/<scope>/<vm>/config/<file>                     .vmcx, .vmgs, .vmrs of the config-only export
    @hyperv/<scope>/<vm>/disks/<n>-<disk-file-name>        full image of disk file n
    @hyperv/<scope>/<vm>/disks/<n>-<disk-file-name>+I+<jobid>   delta of disk file n written by job <jobid>

``<scope>`` is the cluster name (clustered VM) or the host name (standalone host).  ``<n>`` is
``DiskFile.index``: one number per disk file of the VM, so two disks or chain files with the
same file name in different folders never collide.

Escaping (one rule for every component: scope, VM name, file names).  VM names can hold almost
anything; a component must not contain ``/``, must not be ``.`` or ``..``, and must keep the
``+I+`` and ``~`` markers unambiguous.  A character is written as ``%XX`` (its UTF-8 bytes,
upper-case hex) when it is one of ``% / \\ + ~``, is not printable (controls, format
characters, separators, unassigned code points per ``str.isprintable``), or is a ``.`` at the
start of the component.  Everything else (letters of any script, spaces, punctuation) stays as
it is, so names stay readable in bconsole.  Escaping is reversible: :func:`unescape_component`
gives back the original text.

Two VMs with the same name (Hyper-V display names are not unique).  Decision: the VM's
directory is its escaped name; it becomes ``<name>~<vm-guid>`` when another VM of the same scope
has the same name (compared after Unicode NFC and case folding, since restore may write to a
case-insensitive file system) or when the name is empty.  :func:`vm_directories` applies this to
all VMs the caller knows in the scope; the agent passes the whole inventory of the host or
cluster, not just the VMs the FileSet selects, so adding a VM to the FileSet does not move
another VM's tree.  The manifest records every part's name, so restore never has to guess.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

from bareos_hyperv.errors import ManifestError
from bareos_hyperv.model.vm import VmRef

ROOT = "@hyperv"
MANIFEST_FILE = "manifest.xml"
# The final manifest (sizes and digests of every part), saved as a Bareos restore object.
MANIFEST_OBJECT = "manifest.object.xml"
CONFIG_DIR = "config"
DISKS_DIR = "disks"
DELTA_MARKER = "+I+"
# A sparse full (docs/delta-format.md): the full image of a dynamic or differencing disk file as
# the ranges its tables reference; a restore writes it to ``disks/<n>-<file>`` (never as it is).
SPARSE_MARKER = "+S"
GUID_SEPARATOR = "~"
INDEX_SEPARATOR = "-"

# Characters that would split a path or make a marker ambiguous.
_RESERVED = frozenset("%/\\+~")
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
_DISK = re.compile(r"^(0|[1-9][0-9]*)-(.+?)(?:\+I\+([1-9][0-9]*)|(\+S))?$", re.DOTALL)
_ADVICE = "this path was not written by bareos-hyperv; select the files of the VM's @hyperv tree"


class EntryKind(enum.Enum):
    """What a save-set path holds."""

    MANIFEST = "manifest"
    CONFIG = "config"
    DISK = "disk"
    DELTA = "delta"
    SPARSE = "sparse"  # the full image of a disk file as a sparse full (restored to the DISK name)


def escape_component(text: str) -> str:
    """Escape one path component (see module docstring); the result is never empty, ``.`` or ``..``.

    :raises ManifestError: ``text`` is empty (an empty component cannot be a path element).
    """
    if not text:
        raise ManifestError("a save-set path component cannot be empty", what_to_do="pass a non-empty name")
    out = []
    for position, char in enumerate(text):
        if char in _RESERVED or not char.isprintable() or (position == 0 and char == "."):
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            out.append(char)
    return "".join(out)


def unescape_component(text: str, *, path: str = "") -> str:
    """Undo :func:`escape_component`.

    Accepts any ``%XX`` escape and leaves unescaped printable text alone, but refuses what
    :func:`escape_component` never writes where it would change the meaning of a path: an empty
    component, a bare ``%``, an unescaped reserved character or a leading ``.``.

    :raises ManifestError: the component is not in escaped form; the message names ``path``.
    """
    where = path or text

    def bad(problem: str) -> ManifestError:
        return ManifestError(f"save-set path {where!r}: component {text!r} {problem}", what_to_do=_ADVICE)

    if not text:
        raise bad("is empty")
    if text.startswith("."):
        raise bad("starts with an unescaped '.'")
    stripped = _ESCAPE.sub("", text)
    for char in stripped:
        if char in _RESERVED:
            raise bad(f"holds an unescaped {char!r}")
    data = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        data += text[position : match.start()].encode("utf-8", "surrogatepass")
        data.append(int(match.group(1), 16))
        position = match.end()
    data += text[position:].encode("utf-8", "surrogatepass")
    try:
        return bytes(data).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise bad("has %XX escapes that are not UTF-8") from None


def _name_key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _check_guid(guid: str, what: str) -> str:
    if not _GUID.match(guid):
        raise ManifestError(
            f"{what} {guid!r} is not a GUID like 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
            what_to_do="pass the VM's GUID (Msvm_ComputerSystem.Name)",
        )
    return guid


def vm_directory_name(name: str, guid: Optional[str] = None) -> str:
    """The VM's directory component: the escaped name, with ``~<guid>`` when ``guid`` is given.

    An empty name always needs the GUID (``~<guid>``).
    """
    if guid is None:
        if not name:
            raise ManifestError(
                "a VM with an empty name needs its GUID in the save-set path", what_to_do="pass the VM's GUID"
            )
        return escape_component(name)
    _check_guid(guid, "VM GUID")
    return (escape_component(name) if name else "") + GUID_SEPARATOR + guid


def vm_directories(vms: Iterable[VmRef]) -> Dict[str, str]:
    """Directory component per VM GUID for all VMs of one scope (see module docstring).

    A VM gets ``~<guid>`` when another VM in ``vms`` has the same name after NFC and case
    folding, or when its name is empty.
    """
    refs = list(vms)
    counts: Dict[str, int] = {}
    for ref in refs:
        counts[_name_key(ref.name)] = counts.get(_name_key(ref.name), 0) + 1
    return {
        ref.guid: vm_directory_name(
            ref.name, ref.guid if (not ref.name or counts[_name_key(ref.name)] > 1) else None
        )
        for ref in refs
    }


@dataclass(frozen=True)
class SaveSetPath:
    """One file of a VM's save-set tree, in plain (unescaped) terms.

    ``vm_guid`` is set when the directory carries it (``<name>~<guid>``); ``name`` is the
    config or disk file name (``None`` for the manifest); ``index`` the disk file number;
    ``job_id`` the job that wrote a delta.
    """

    scope: str
    vm_name: str
    kind: EntryKind
    vm_guid: Optional[str] = None
    name: Optional[str] = None
    index: Optional[int] = None
    job_id: Optional[int] = None

    # ------------------------------------------------------------------ building

    @classmethod
    def manifest(cls, scope: str, vm_name: str, *, vm_guid: Optional[str] = None) -> SaveSetPath:
        """The manifest of a VM."""
        return cls(scope, vm_name, EntryKind.MANIFEST, vm_guid).checked()

    @classmethod
    def config(cls, scope: str, vm_name: str, file_name: str, *, vm_guid: Optional[str] = None) -> SaveSetPath:
        """A native configuration file (``<vm-guid>.vmcx``, ``.vmgs``, ``.vmrs``)."""
        return cls(scope, vm_name, EntryKind.CONFIG, vm_guid, name=file_name).checked()

    @classmethod
    def disk(
        cls, scope: str, vm_name: str, index: int, file_name: str, *, vm_guid: Optional[str] = None
    ) -> SaveSetPath:
        """The full image of disk file ``index``."""
        return cls(scope, vm_name, EntryKind.DISK, vm_guid, name=file_name, index=index).checked()

    @classmethod
    def sparse(
        cls, scope: str, vm_name: str, index: int, file_name: str, *, vm_guid: Optional[str] = None
    ) -> SaveSetPath:
        """The full image of disk file ``index`` saved as a sparse full."""
        return cls(scope, vm_name, EntryKind.SPARSE, vm_guid, name=file_name, index=index).checked()

    @classmethod
    def delta(
        cls, scope: str, vm_name: str, index: int, file_name: str, *, job_id: int, vm_guid: Optional[str] = None
    ) -> SaveSetPath:
        """The delta of disk file ``index`` written by job ``job_id``."""
        return cls(scope, vm_name, EntryKind.DELTA, vm_guid, name=file_name, index=index, job_id=job_id).checked()

    def checked(self) -> SaveSetPath:
        """Self, after checking the fields fit the kind.

        :raises ManifestError: a field is missing, empty or out of range for the kind.
        """
        problem = None
        if not self.scope:
            problem = "the scope (cluster or host name) is empty"
        elif self.kind is not EntryKind.MANIFEST and not self.name:
            problem = f"a {self.kind.value} path needs a file name"
        elif self.kind in (EntryKind.DISK, EntryKind.DELTA, EntryKind.SPARSE) and (
                self.index is None or self.index < 0):
            problem = f"a {self.kind.value} path needs a disk file number >= 0"
        elif (self.kind is EntryKind.DELTA) != (self.job_id is not None):
            problem = "a job id belongs to delta paths, and every delta path has one"
        elif self.job_id is not None and self.job_id < 1:
            problem = f"job id {self.job_id} is not a Bareos job id"
        elif self.kind in (EntryKind.MANIFEST, EntryKind.CONFIG) and self.index is not None:
            problem = f"a {self.kind.value} path has no disk file number"
        if problem is not None:
            raise ManifestError(
                f"cannot build the save-set path of VM {self.vm_name!r}: {problem}",
                what_to_do="this is a bug in the caller; report it",
            )
        vm_directory_name(self.vm_name, self.vm_guid)  # checks the GUID and the empty-name rule
        return self

    # ------------------------------------------------------------------ formatting

    @property
    def vm_directory(self) -> str:
        """``@hyperv/<scope>/<vm>``."""
        return f"{ROOT}/{escape_component(self.scope)}/{vm_directory_name(self.vm_name, self.vm_guid)}"

    @property
    def relative(self) -> str:
        """The path below the VM's directory, as ``SaveSetPart.name`` records it."""
        if self.kind is EntryKind.MANIFEST:
            return MANIFEST_FILE
        name = escape_component(self.name or "")
        if self.kind is EntryKind.CONFIG:
            return f"{CONFIG_DIR}/{name}"
        base = f"{DISKS_DIR}/{self.index}{INDEX_SEPARATOR}{name}"
        if self.kind is EntryKind.SPARSE:
            return f"{base}{SPARSE_MARKER}"
        return base if self.kind is EntryKind.DISK else f"{base}{DELTA_MARKER}{self.job_id}"

    @property
    def path(self) -> str:
        """The full save-set path."""
        return f"{self.vm_directory}/{self.relative}"

    def __str__(self) -> str:
        return self.path


def parse_path(path: str) -> SaveSetPath:
    """Parse a save-set path written by :class:`SaveSetPath` (a leading ``/`` is accepted).

    :raises ManifestError: the path is not a bareos-hyperv save-set path; the message names it.
    """

    def bad(problem: str) -> ManifestError:
        return ManifestError(f"save-set path {path!r} {problem}", what_to_do=_ADVICE)

    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    if len(parts) < 4 or parts[0] != ROOT:
        raise bad(f"does not have the form {ROOT}/<scope>/<vm>/<file>")
    scope = unescape_component(parts[1], path=path)
    vm_part = parts[2]
    guid: Optional[str] = None
    if GUID_SEPARATOR in vm_part:
        vm_part, guid = vm_part.split(GUID_SEPARATOR, 1)
        if not _GUID.match(guid):
            raise bad(f"has {guid!r} after '~' in the VM directory, which is not a GUID")
    vm_name = unescape_component(vm_part, path=path) if vm_part or guid is None else ""
    rest = parts[3:]
    if rest == [MANIFEST_FILE]:
        return SaveSetPath(scope, vm_name, EntryKind.MANIFEST, guid)
    if len(rest) == 2 and rest[0] == CONFIG_DIR:
        return SaveSetPath(scope, vm_name, EntryKind.CONFIG, guid, name=unescape_component(rest[1], path=path))
    if len(rest) == 2 and rest[0] == DISKS_DIR:
        match = _DISK.match(rest[1])
        if match is None:
            raise bad(f"has disk entry {rest[1]!r}, expected <n>-<file>, <n>-<file>+S or <n>-<file>+I+<jobid>")
        index, name, job, sparse = match.groups()
        return SaveSetPath(
            scope,
            vm_name,
            EntryKind.SPARSE if sparse else EntryKind.DISK if job is None else EntryKind.DELTA,
            guid,
            name=unescape_component(name, path=path),
            index=int(index),
            job_id=None if job is None else int(job),
        )
    raise bad(
        f"has {'/'.join(rest)!r} below the VM directory, expected {MANIFEST_FILE}, {CONFIG_DIR}/<file> "
        f"or {DISKS_DIR}/<n>-<file>"
    )
