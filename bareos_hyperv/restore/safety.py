r"""Checks of untrusted names, paths and values from a manifest, before a restore uses them.

A save set is input, not trusted code: whoever can write to the Bareos storage (or hand over a
volume) decides what a manifest says.  Restore turns manifest values into host paths it writes to,
so every file name, folder and number is checked here before the planner uses it:

* paths must be absolute drive (``C:\...``) or UNC (``\\server\share\...``) paths; device paths
  (``\\?\``, ``\\.\``), drive-relative paths (``C:x``) and relative paths are refused;
* no component may be ``.`` or ``..``, hold a control or format character (bidi overrides hide a
  file's real extension), ``:`` (an alternate data stream) or another character Windows forbids,
  be a Windows device name (``CON``, ``NUL``, ``COM1``, ``LPT1``... also with an extension: Windows
  opens ``CON.vhdx`` as the console), or end with a dot or a space (Windows strips them, so the
  name on disk would differ from the name checked);
* file names of disks end in ``.vhd``/``.vhdx``/``.avhd``/``.avhdx``, configuration files in
  ``.vmcx``/``.vmrs``/``.vmgs``/``.xml``/``.bin``/``.vsv``;
* two files of one VM may not have names that differ only by case or Unicode normalisation
  (NTFS folds case, and look-alike names are a way to make one file pass for another);
* sizes, counts and lengths are bounded, so a forged manifest cannot make the planner promise
  petabytes or print megabytes into the job log.

Every check returns :class:`Problem` values (message naming the value, and what to do), so the
planner can list all of them at once; :func:`raise_for` turns a list into one error.  Finally
:func:`placement_problems` checks that every destination path the planner produced lies under
the destination folder it chose.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type

from bareos_hyperv.errors import BareosHyperVError, ManifestError
from bareos_hyperv.manifest.document import Manifest
from bareos_hyperv.manifest.layout import CONFIG_DIR, DISKS_DIR, unescape_component
from bareos_hyperv.model.backup import DiskFile, PartKind
from bareos_hyperv.model.disk import DiskType
from bareos_hyperv.model.vm import DriveKind

__all__ = [
    "CONFIG_EXTENSIONS",
    "DISK_EXTENSIONS",
    "Problem",
    "check_manifest",
    "config_file_name",
    "duplicate_name_problems",
    "file_name_problems",
    "folder_component",
    "host_path_problems",
    "is_under",
    "join_host_path",
    "manifest_problems",
    "name_key",
    "path_key",
    "placement_problems",
    "raise_for",
    "shown",
    "split_host_path",
    "vm_name_problems",
    "win_basename",
    "win_dirname",
]

DISK_EXTENSIONS: Tuple[str, ...] = (".vhd", ".vhdx", ".avhd", ".avhdx")
CONFIG_EXTENSIONS: Tuple[str, ...] = (".vmcx", ".vmrs", ".vmgs", ".xml", ".bin", ".vsv")
SHARED_DISK_EXTENSIONS: Tuple[str, ...] = (".vhds",)

MAX_COMPONENT = 255  # NTFS: 255 UTF-16 units per name
MAX_PATH = 32767  # the longest path Windows can name at all (extended-length limit)
MAX_VM_NAME = 100  # Hyper-V refuses longer VM names
MAX_TEXT = 1024  # adapter, switch, node names and other free text from a manifest
MAX_FILE_SIZE = 65 * 2**40  # a VHDX holds at most 64 TiB of data; a little room for its metadata
MAX_FILES = 4096  # disk files of one VM (a 256-drive VM with chains of 16 is far below)
MAX_DEVICES = 1024  # drives or adapters of one VM (Hyper-V allows 4x64 SCSI + 4 IDE drives)
MAX_PROCESSORS = 2048
MAX_MEMORY_MB = 2**26  # 64 TiB; Hyper-V's own limit is lower

_RESOLVE_MANIFEST = (
    "this save set was not written by bareos-hyperv as it is, or it was changed: restore another "
    "backup job of this VM, or restore the files alone to a directory (restore_local=yes) and inspect them"
)
_FORBIDDEN = frozenset('<>:"|?*')
_SEPARATORS = frozenset("\\/")
_DEVICE_NAMES = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$", "clock$"]
    + [f"{port}{n}" for port in ("com", "lpt") for n in [*"0123456789", "\u00b9", "\u00b2", "\u00b3"]]
)
_DRIVE = re.compile(r"^([A-Za-z]):[\\/]")
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_VERSION = re.compile(r"^[0-9]{1,4}\.[0-9]{1,4}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{12}$")


@dataclass(frozen=True)
class Problem:
    """Something that blocks the restore: what it means (``message``) and how to resolve it (``resolve``)."""

    message: str
    resolve: str


# --------------------------------------------------------------------------- small helpers


def shown(value: str, limit: int = 120) -> str:
    """``value`` quoted for a message: control characters escaped, long values shortened in the middle."""
    if len(value) > limit:
        value = value[: limit * 2 // 3] + "\u2026" + value[-(limit // 3) :]
    return repr(value)


def name_key(name: str) -> str:
    """How Windows (NTFS folds case) and a careful reader compare two names: NFC, then case-folded."""
    return unicodedata.normalize("NFC", name).casefold()


def path_key(path: str) -> str:
    r"""The comparison key of a host path: ``/`` read as ``\``, no trailing ``\``, NFC, case-folded.

    ``Destination.existing_files`` holds keys of this form.
    """
    return name_key(path.replace("/", "\\").rstrip("\\"))


def win_basename(path: str) -> str:
    r"""Last component of a Windows path (``\`` or ``/`` separated)."""
    return path.replace("/", "\\").rstrip("\\").rsplit("\\", 1)[-1]


def win_dirname(path: str) -> str:
    r"""Everything before the last component of a Windows path (``C:\`` for ``C:\a``)."""
    text = path.replace("/", "\\").rstrip("\\")
    head = text.rsplit("\\", 1)[0] if "\\" in text else ""
    return head + "\\" if re.fullmatch(r"[A-Za-z]:", head) else head


def join_host_path(folder: str, *names: str) -> str:
    r"""``folder\name\...`` with exactly one ``\`` between parts (``C:\`` + ``a`` = ``C:\a``)."""
    out = folder.replace("/", "\\").rstrip("\\")
    for name in names:
        out = f"{out}\\{name}"
    return out


def _bad_char(text: str) -> Optional[str]:
    for char in text:
        category = unicodedata.category(char)
        # Cc: controls (newlines forge job-log lines); Cf: format characters (bidi overrides and
        # zero-width characters make a name look like another); Zl/Zp: line and paragraph separators.
        if category in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            return f"holds the control or format character U+{ord(char):04X}"
    return None


def _component_problem(name: str) -> Optional[str]:
    """What is wrong with one path component, or None (a phrase to follow the value)."""
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return f"is a {name!r} component, which would leave its folder"
    if len(name) > MAX_COMPONENT:
        return f"is longer than {MAX_COMPONENT} characters"
    bad = _bad_char(name)
    if bad:
        return bad
    if ":" in name:
        return "names an alternate data stream (':')"
    if set(name) & _SEPARATORS:
        return "holds a path separator"
    forbidden = sorted(set(name) & _FORBIDDEN)
    if forbidden:
        return f"holds {''.join(forbidden)!r}, which Windows does not allow in names"
    if name[-1] in ". ":
        return "ends with a dot or a space, which Windows strips from names"
    stem = name.split(".", 1)[0].rstrip(" ").casefold()
    if stem in _DEVICE_NAMES:
        return f"is the Windows device name {stem.upper()!r} (Windows opens the device, not a file)"
    return None


# --------------------------------------------------------------------------- names and paths


def file_name_problems(name: str, *, what: str, extensions: Sequence[str], resolve: str) -> List[Problem]:
    """Problems of a plain file name (one component) that must end with one of ``extensions``."""
    problem = _component_problem(name)
    if problem is not None:
        return [Problem(f"{what} {shown(name)} {problem}", resolve)]
    if not name.casefold().endswith(tuple(e.casefold() for e in extensions)):
        return [Problem(f"{what} {shown(name)} does not end with {'/'.join(extensions)}", resolve)]
    return []


def split_host_path(path: str) -> Optional[Tuple[str, List[str]]]:
    r"""Root (``C:`` or ``\\server\share``) and components of a clean absolute host path, else None.

    "Clean" means :func:`host_path_problems` finds nothing; repeated separators are dropped.
    """
    if host_path_problems(path, what="path", resolve=""):
        return None
    text = path.replace("/", "\\")
    if text.startswith("\\\\"):
        server, share, *rest = text[2:].split("\\")
        return f"\\\\{server}\\{share}", [c for c in rest if c]
    return f"{text[0].upper()}:", [c for c in text[3:].split("\\") if c]


def host_path_problems(
    path: str,
    *,
    what: str,
    resolve: str,
    allow_unc: bool = True,
    extensions: Optional[Sequence[str]] = None,
) -> List[Problem]:
    r"""Problems of an absolute host path (drive or UNC; see module docstring).

    With ``extensions`` the last component must be a file name ending with one of them.
    """
    if not path:
        return [Problem(f"{what} is empty", resolve)]
    if len(path) > MAX_PATH:
        return [Problem(f"{what} {shown(path)} is longer than {MAX_PATH} characters", resolve)]
    text = path.replace("/", "\\")
    if text.startswith(("\\\\?\\", "\\\\.\\", "\\??\\")):
        return [Problem(f"{what} {shown(path)} is a device or extended-length path", resolve)]
    if text.startswith("\\\\"):
        if not allow_unc:
            return [Problem(f"{what} {shown(path)} is a UNC path; a local drive path is expected here", resolve)]
        parts = text[2:].split("\\")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            return [Problem(f"{what} {shown(path)} is a UNC path without a server and a share", resolve)]
        components = [c for c in parts if c]
    elif _DRIVE.match(text):
        components = [c for c in text[3:].split("\\") if c]
    else:
        return [Problem(f"{what} {shown(path)} is not an absolute path (C:\\... or \\\\server\\share\\...)", resolve)]
    for component in components:
        problem = _component_problem(component)
        if problem is not None:
            return [Problem(f"{what} {shown(path)}: the part {shown(component)} {problem}", resolve)]
    if extensions is not None:
        if not components:
            return [Problem(f"{what} {shown(path)} names no file", resolve)]
        return file_name_problems(components[-1], what=f"{what}: file name", extensions=extensions, resolve=resolve)
    return []


def is_under(path: str, folder: str) -> bool:
    r"""Whether ``path`` lies strictly inside ``folder`` (both clean absolute paths; compared as Windows does)."""
    inner = split_host_path(path)
    outer = split_host_path(folder)
    if inner is None or outer is None:
        return False
    (root, comps), (oroot, ocomps) = inner, outer
    if name_key(root) != name_key(oroot) or len(comps) <= len(ocomps):
        return False
    return all(name_key(a) == name_key(b) for a, b in zip(comps, ocomps))


def vm_name_problems(name: str, *, what: str, resolve: str) -> List[Problem]:
    """Problems of a VM name Hyper-V would be given: empty, longer than 100 characters, control characters."""
    if not name.strip():
        return [Problem(f"{what} is empty", resolve)]
    if len(name) > MAX_VM_NAME:
        return [Problem(f"{what} {shown(name)} is longer than {MAX_VM_NAME} characters", resolve)]
    bad = _bad_char(name)
    if bad:
        return [Problem(f"{what} {shown(name)} {bad}", resolve)]
    return []


def folder_component(name: str) -> str:
    r"""A folder name made from a VM name (``<storage>\<vm name>``): always one safe component.

    VM names may hold characters that folder names cannot (``web01 / prod``); those, control and
    format characters become ``_``, trailing dots and spaces are dropped, a device name gets
    ``_`` after it (``NUL.x`` -> ``NUL_.x``), and an empty result becomes ``vm``.
    """
    chars = []
    for char in unicodedata.normalize("NFC", name):
        bad = char in _FORBIDDEN or char in _SEPARATORS or _bad_char(char) is not None
        chars.append("_" if bad else char)
    text = "".join(chars)[:MAX_VM_NAME].rstrip(". ").strip()
    if text in ("", ".", ".."):
        return "vm"
    stem, dot, rest = text.partition(".")
    if stem.rstrip(" ").casefold() in _DEVICE_NAMES:
        return f"{stem.rstrip(' ')}_{dot}{rest}"  # Windows reads "NUL.x" as the device too
    return text


def duplicate_name_problems(paths: Sequence[str], *, what: str) -> List[Problem]:
    """Names among one VM's files that differ only by case or Unicode normalisation, and paths listed twice."""
    problems: List[Problem] = []
    by_path: Dict[str, List[str]] = {}
    by_name: Dict[str, List[str]] = {}
    for path in paths:
        by_path.setdefault(path_key(path), []).append(path)
        name = win_basename(path)
        spellings = by_name.setdefault(name_key(name), [])
        if name not in spellings:
            spellings.append(name)
    for same in by_path.values():
        if len(same) > 1:
            message = f"{what}: the file {shown(same[0])} is listed {len(same)} times"
            problems.append(Problem(message, _RESOLVE_MANIFEST))
    for spellings in by_name.values():
        if len(spellings) > 1:
            listed = " and ".join(shown(s) for s in spellings[:3])
            message = f"{what}: the file names {listed} differ only by case or Unicode normalisation"
            problems.append(Problem(message, _RESOLVE_MANIFEST))
    return problems


# --------------------------------------------------------------------------- the manifest


def _text_problems(value: str, what: str, limit: int = MAX_TEXT) -> List[Problem]:
    if len(value) > limit:
        return [Problem(f"{what} {shown(value)} is longer than {limit} characters", _RESOLVE_MANIFEST)]
    bad = _bad_char(value)
    return [Problem(f"{what} {shown(value)} {bad}", _RESOLVE_MANIFEST)] if bad else []


def _size_problems(value: int, what: str, limit: int = MAX_FILE_SIZE) -> List[Problem]:
    if not 0 <= value <= limit:
        return [Problem(f"{what} {value} is outside 0..{limit}", _RESOLVE_MANIFEST)]
    return []


def _chain_problems(settings_id: str, chain: Sequence[DiskFile], what: str) -> List[Problem]:
    problems: List[Problem] = []
    for position, file in enumerate(chain):
        info = file.info
        label = f"{what}, file {file.index}"
        problems += host_path_problems(info.path, what=f"{label} path", resolve=_RESOLVE_MANIFEST,
                                       extensions=DISK_EXTENSIONS)
        problems += _size_problems(file.file_size, f"{label} size")
        problems += _size_problems(info.virtual_size, f"{label} virtual size")
        if file.sha256 is not None and not _SHA256.match(file.sha256):
            problems.append(Problem(f"{label}: SHA-256 {shown(file.sha256)} is not 64 hex digits", _RESOLVE_MANIFEST))
        last = position == len(chain) - 1
        if info.type is DiskType.DIFFERENCING:
            if last:
                problems.append(Problem(
                    f"{label} {shown(info.path)} is a differencing disk whose parent is not in the backup",
                    _RESOLVE_MANIFEST))
            elif info.parent_path is None or path_key(info.parent_path) != path_key(chain[position + 1].info.path):
                problems.append(Problem(
                    f"{label} {shown(info.path)} names the parent {shown(info.parent_path or '')}, "
                    f"but the next file of the chain is {shown(chain[position + 1].info.path)}",
                    _RESOLVE_MANIFEST))
        elif not last:
            problems.append(Problem(
                f"{label} {shown(info.path)} is not a differencing disk, yet the chain of drive "
                f"{shown(settings_id)} continues after it", _RESOLVE_MANIFEST))
    return problems


def manifest_problems(manifest: Manifest) -> List[Problem]:
    """Every problem of a manifest's untrusted values (see module docstring), in manifest order."""
    problems: List[Problem] = []
    vm = manifest.vm
    what = "the manifest"
    problems += _text_problems(vm.ref.name, "VM name")
    if not _GUID.match(vm.ref.guid):
        problems.append(Problem(f"VM ID {shown(vm.ref.guid)} is not a GUID", _RESOLVE_MANIFEST))
    if not _VERSION.match(vm.version):
        problems.append(Problem(f"configuration version {shown(vm.version)} is not major.minor", _RESOLVE_MANIFEST))
    if not 1 <= vm.processors <= MAX_PROCESSORS:
        problems.append(Problem(f"processor count {vm.processors} is outside 1..{MAX_PROCESSORS}", _RESOLVE_MANIFEST))
    if not 0 <= vm.memory_mb <= MAX_MEMORY_MB:
        problems.append(Problem(f"memory {vm.memory_mb} MB is outside 0..{MAX_MEMORY_MB}", _RESOLVE_MANIFEST))
    if vm.config_root:
        problems += host_path_problems(vm.config_root, what="configuration folder", resolve=_RESOLVE_MANIFEST)
    if len(vm.drives) > MAX_DEVICES or len(vm.adapters) > MAX_DEVICES:
        problems.append(Problem(f"{what} lists {len(vm.drives)} drives and {len(vm.adapters)} network adapters; "
                                f"at most {MAX_DEVICES} each are possible", _RESOLVE_MANIFEST))
        return problems  # do not walk (and report on) thousands of forged entries
    for drive in vm.drives:
        label = f"drive {drive.slot}"
        problems += _text_problems(drive.settings_id, f"{label} settings ID")
        if drive.path is None:
            continue
        if drive.kind is DriveKind.VIRTUAL_DISK:
            problems += host_path_problems(drive.path, what=f"{label} path", resolve=_RESOLVE_MANIFEST,
                                           extensions=DISK_EXTENSIONS)
        elif drive.kind is DriveKind.SHARED_DISK:
            problems += host_path_problems(drive.path, what=f"{label} path", resolve=_RESOLVE_MANIFEST,
                                           extensions=SHARED_DISK_EXTENSIONS)
        else:
            problems += host_path_problems(drive.path, what=f"{label} media path", resolve=_RESOLVE_MANIFEST)
    for adapter in vm.adapters:
        problems += _text_problems(adapter.name, "network adapter name", MAX_COMPONENT)
        if adapter.switch_name is not None:
            problems += _text_problems(adapter.switch_name, f"switch name of adapter {shown(adapter.name)}",
                                       MAX_COMPONENT)
        if adapter.mac and not _MAC.match(adapter.mac):
            problems.append(Problem(f"MAC address {shown(adapter.mac)} of adapter {shown(adapter.name)} "
                                    "is not 12 hex digits", _RESOLVE_MANIFEST))
    files = [f for d in manifest.disks for f in d.chain]
    if len(files) > MAX_FILES:
        problems.append(Problem(f"{what} lists {len(files)} disk files; at most {MAX_FILES} are accepted",
                                _RESOLVE_MANIFEST))
        return problems
    indexes: Dict[int, int] = {}
    for file in files:
        indexes[file.index] = indexes.get(file.index, 0) + 1
    for index, count in sorted(indexes.items()):
        if count > 1:
            problems.append(Problem(f"{what} numbers {count} disk files {index}", _RESOLVE_MANIFEST))
    slots = {name_key(d.settings_id): str(d.slot) for d in vm.drives}
    for disk in manifest.disks:
        label = slots.get(name_key(disk.settings_id)) or shown(disk.settings_id)
        problems += _chain_problems(disk.settings_id, disk.chain, f"disk {label}")
    config_paths: List[str] = []
    for part in manifest.backup.parts:
        problems += _size_problems(part.size, f"size of save-set file {shown(part.name)}")
        if not _SHA256.match(part.sha256):
            problems.append(Problem(f"SHA-256 of save-set file {shown(part.name)} is not 64 hex digits",
                                    _RESOLVE_MANIFEST))
        if part.kind is PartKind.CONFIG:
            name = config_file_name(part.name)
            if name is None:
                problems.append(Problem(f"configuration file {shown(part.name)} is not {CONFIG_DIR}/<file name>",
                                        _RESOLVE_MANIFEST))
                continue
            problems += file_name_problems(name, what="configuration file", extensions=CONFIG_EXTENSIONS,
                                           resolve=_RESOLVE_MANIFEST)
            config_paths.append(name)
        else:
            problems += _part_name_problems(part.name)
            if part.file_index is not None and part.file_index not in indexes:
                problems.append(Problem(f"save-set file {shown(part.name)} names disk file {part.file_index}, "
                                        "which the manifest does not list", _RESOLVE_MANIFEST))
    problems += duplicate_name_problems([f.info.path for f in files] + config_paths, what="the VM's files")
    if manifest.cluster is not None:
        for volume in manifest.cluster.volumes:
            problems += host_path_problems(volume.path, what=f"cluster shared volume {shown(volume.name)}",
                                           resolve=_RESOLVE_MANIFEST, allow_unc=False)
    return problems


def config_file_name(part_name: str) -> Optional[str]:
    """The host file name of a ``config/<escaped name>`` save-set part, None when it is not of that form."""
    head, sep, tail = part_name.partition("/")
    if head != CONFIG_DIR or not sep or "/" in tail or "\\" in tail:
        return None
    try:
        return unescape_component(tail, path=part_name)
    except ManifestError:
        return None


def _part_name_problems(name: str) -> List[Problem]:
    head, sep, tail = name.partition("/")
    if head != DISKS_DIR or not sep or not tail or "/" in tail or "\\" in tail or tail in (".", ".."):
        return [Problem(f"save-set file {shown(name)} is not {DISKS_DIR}/<n>-<file name>", _RESOLVE_MANIFEST)]
    return _text_problems(tail, "save-set file name", MAX_COMPONENT * 2)


def check_manifest(manifest: Manifest) -> None:
    """Raise :class:`ManifestError` listing every problem :func:`manifest_problems` finds."""
    raise_for(manifest_problems(manifest), ManifestError, what=f"the manifest of VM {shown(manifest.vm.ref.name)}")


# --------------------------------------------------------------------------- the plan


def placement_problems(placements: Iterable[Tuple[str, str, str]]) -> List[Problem]:
    """Each ``(what, path, root)`` must be a clean path strictly inside ``root``, the folder the planner chose."""
    problems: List[Problem] = []
    for what, path, root in placements:
        found = host_path_problems(path, what=f"destination of {what}", resolve=_RESOLVE_MANIFEST)
        if found:
            problems += found
        elif not is_under(path, root):
            problems.append(Problem(
                f"the restore plan put {what} at {shown(path)}, outside the destination folder {shown(root)} it chose",
                "this is a bug in bareos-hyperv (nothing was written): report it with this job log"))
    return problems


def raise_for(problems: Sequence[Problem], error: Type[BareosHyperVError] = ManifestError, *, what: str = "") -> None:
    """Raise ``error`` (ManifestError, ConfigurationError, PlanError) naming every problem, if there is any."""
    if not problems:
        return
    prefix = f"{what}: " if what else ""
    message = prefix + "; ".join(p.message for p in problems)
    resolve = " ".join(dict.fromkeys(p.resolve for p in problems))
    raise error(message, what_to_do=resolve)
