"""``bareos-hyperv install-plugin``: put the module Bareos loads into the fd's plugin directory.

The module (``bareos-fd-hyperv.py``) ships inside the package as ``bareos_hyperv/plugin/``
(packaging/ in a source checkout).  It is installed with a short preamble that makes the
``bareos_hyperv`` package importable by the fd's Python from wherever it was installed (a private
virtual environment, say): the preamble appends that directory to ``sys.path`` unless it is there
already.  Appended, never prepended: a ``module_path=`` in the plugin string (which the fd puts
first) still wins, and nothing of the environment shadows a module of the fd's own Python.

The fd only imports ``bareos_hyperv.fd`` (standard library only); everything else runs in the agent
process, whose interpreter is derived from the same location (``agent_python`` default).
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path
from typing import Optional

from bareos_hyperv import __version__
from bareos_hyperv.errors import ConfigurationError

__all__ = ["ENTRY_FILE", "entry_source", "install_plugin", "package_path", "render_entry"]

ENTRY_FILE = "bareos-fd-hyperv.py"
_PACKAGE = Path(__file__).resolve().parents[1]  # .../bareos_hyperv
MARKER = "# Installed by `bareos-hyperv install-plugin`"


def package_path() -> str:
    """The directory that holds the ``bareos_hyperv`` package this command runs from."""
    return str(_PACKAGE.parent)


def entry_source() -> Path:
    """The shipped entry file: package data in a wheel, ``packaging/`` in a source checkout."""
    for candidate in (_PACKAGE / "plugin" / ENTRY_FILE, _PACKAGE.parent / "packaging" / ENTRY_FILE):
        if candidate.is_file():
            return candidate
    raise ConfigurationError(f"the plugin entry file {ENTRY_FILE} is not part of this installation",
                             what_to_do="reinstall bareos-hyperv from its wheel or Debian/RPM package",
                             context={"package": str(_PACKAGE)})


def render_entry(site_dir: Optional[str]) -> str:
    """The entry file as installed: the shipped text, with the ``sys.path`` preamble after its docstring.

    ``site_dir`` None (or empty) gives the file unchanged: the package must then be importable by
    the fd's Python by itself (installed for it, or named by ``module_path=``).
    """
    text = entry_source().read_text(encoding="utf-8")
    if not site_dir:
        return text
    if not os.path.isabs(site_dir):
        raise ConfigurationError(f"--package-path {site_dir} is not an absolute path",
                                 what_to_do="give the absolute directory that contains bareos_hyperv/")
    body = ast.parse(text).body
    docstring_end = 0
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        docstring_end = body[0].end_lineno or 0
    lines = text.splitlines(keepends=True)
    preamble = (
        "\n"
        f"{MARKER} (bareos-hyperv {__version__}): the package lives in\n"
        f"# {site_dir}; appended, so that a module_path= given in the plugin string comes first.\n"
        "import sys as _sys\n"
        "\n"
        f"if {site_dir!r} not in _sys.path:\n"
        f"    _sys.path.append({site_dir!r})\n"
    )
    return "".join(lines[:docstring_end]) + preamble + "".join(lines[docstring_end:])


def install_plugin(plugin_dir: str, site_dir: Optional[str]) -> tuple[Path, str]:
    """Write the entry file into ``plugin_dir`` (atomically, mode 0644); returns (path, what happened)."""
    directory = Path(plugin_dir)
    if not directory.is_dir():
        raise ConfigurationError(f"the plugin directory {plugin_dir} does not exist",
                                 what_to_do="give the fd's Plugin Directory (bareos-fd.d/client/myself.conf), "
                                            "e.g. --plugin-dir /usr/lib/bareos/plugins")
    text = render_entry(site_dir)
    target = directory / ENTRY_FILE
    try:
        before = target.read_text(encoding="utf-8") if target.exists() else None
    except (OSError, UnicodeDecodeError):
        before = ""
    if before == text:
        return target, "unchanged"
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + ENTRY_FILE + ".", dir=str(directory))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigurationError(f"cannot write {target}: {exc.strerror}",
                                 what_to_do="run the command as root (or as the owner of the plugin directory)"
                                 ) from None
    return target, "installed" if before is None else "replaced"
