r"""Absolute Windows host paths, split and checked (standard library only).

Moved here from :mod:`bareos_hyperv.storage.locations` so that the fd can type the path options
(``share_map``, ``path_map``) with the same rules the agent resolves paths by; the storage layer
re-exports these names.  A path is refused when it is relative, drive-relative (``C:x``), a device
path (``\\?\``, ``\\.\``), has ``.``/``..`` components or names an alternate data stream.
"""

from __future__ import annotations

import re
from typing import List, Tuple

from bareos_hyperv.errors import StorageError

__all__ = ["InvalidPathError", "check_component", "split_windows_path"]

_DRIVE_PATH = re.compile(r"^([A-Za-z]):\\")
_FORBIDDEN_IN_NAME = set(':*?"<>|\0')


class InvalidPathError(StorageError):
    """A host path cannot be turned into a location (relative, escaping, unmapped, ...)."""


def check_component(name: str, whole: str) -> None:
    """Refuse a path component Windows would not take as one name (``..``, separators, ``:``, ...)."""
    if name in ("", ".", ".."):
        raise InvalidPathError(
            f"path component {name!r} is not allowed",
            context={"path": whole},
            what_to_do="use an absolute path without '.' or '..' components",
        )
    bad = sorted(set(name) & (_FORBIDDEN_IN_NAME | {"\\", "/"}))
    if bad:
        raise InvalidPathError(
            f"path component {name!r} contains characters Windows does not allow in names: {''.join(bad)!r}",
            context={"path": whole},
            what_to_do="check the path; alternate data streams (name:stream) are not supported",
        )


def split_windows_path(path: str) -> Tuple[str, List[str]]:
    r"""Split an absolute Windows path into its root and validated components.

    The root is ``"C:"`` for a drive path or ``"\\server\share"`` for a UNC path; ``/`` is accepted as a
    separator as Windows does.  Raises :class:`InvalidPathError` for anything else.
    """
    if not isinstance(path, str) or not path:
        raise InvalidPathError(
            "empty path", what_to_do="pass an absolute Windows path such as C:\\VMs\\a.vhdx"
        )
    p = path.replace("/", "\\")
    if p.startswith(("\\\\?\\", "\\\\.\\")):
        raise InvalidPathError(
            "device and extended-length paths (\\\\?\\, \\\\.\\) are not supported",
            context={"path": path},
            what_to_do="use the plain drive or UNC path",
        )
    m = _DRIVE_PATH.match(p)
    if m:
        root = f"{m.group(1).upper()}:"
        rest = p[3:]
    elif p.startswith("\\\\"):
        parts = p[2:].split("\\", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise InvalidPathError(
                "UNC path needs a server and a share",
                context={"path": path},
                what_to_do="write it as \\\\server\\share\\folder\\file",
            )
        for comp in parts[:2]:
            check_component(comp, path)
        root = f"\\\\{parts[0]}\\{parts[1]}"
        rest = parts[2] if len(parts) == 3 else ""
    else:
        raise InvalidPathError(
            "not an absolute Windows path "
            "(a drive path like C:\\... or a UNC path like \\\\server\\share\\...)",
            context={"path": path},
            what_to_do="pass the full path as Hyper-V reports it",
        )
    # Repeated or trailing separators are harmless on Windows; empty components are dropped.
    comps = [c for c in rest.split("\\") if c != ""]
    for c in comps:
        check_component(c, path)
    return root, comps
