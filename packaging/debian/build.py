#!/usr/bin/env python3
"""Build the Debian package bareos-filedaemon-hyperv-python-plugin from a bareos-hyperv wheel.

    python3 packaging/debian/build.py --wheel dist/bareos_hyperv-0.1.0-py3-none-any.whl --output dist/

What goes where (Bareos's own layout; decisions in docs/install.md, "Debian package"):

    /usr/lib/bareos/plugins/bareos-fd-hyperv.py   the module the fd loads (module_name=bareos-fd-hyperv),
                                                   with a preamble naming the environment below
    /usr/lib/bareos-hyperv/                        private virtual environment of Debian's python3.X:
                                                   bareos_hyperv and its Python dependencies; its
                                                   bin/python3.X runs the agent (agent_python default)
    /usr/bin/bareos-hyperv                         the command (list, check, plan, install-plugin)
    /usr/share/doc/<package>/                      copyright, changelog, README, examples

Debian 12's own python3 packages cannot carry the plugin: python3-winrm is 0.3.0 (0.5 needed),
python3-cryptography 38 (41 needed), and smbprotocol and pyspnego are not packaged at all.

The dependencies come from PyPI through pip (the default; ``--pip-arg`` passes e.g. ``--no-index
--find-links WHEELHOUSE`` for an offline build), or, with ``--deps-from PYTHON``, are copied
file by file (as their RECORD lists them) from an environment where they are installed already:
that is how the tests build the package without a network.  The environment is built in a
staging directory and then made to work at its final place: script shebangs and pyvenv.cfg are
rewritten, byte code and activation scripts are left out (postinst compiles), and no path of the
build machine may remain.  Built with dpkg-deb --root-owner-group (no fakeroot, no debhelper).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
PACKAGING = HERE.parent
PACKAGE = "bareos-filedaemon-hyperv-python-plugin"
VENV = "/usr/lib/bareos-hyperv"
PLUGIN_DIR = "/usr/lib/bareos/plugins"
DOC_DIR = f"/usr/share/doc/{PACKAGE}"
ACTIVATE = ("activate", "activate.csh", "activate.fish", "Activate.ps1", "activate.nu", "activate_this.py")

# Run by the environment that holds the dependencies: the installed distributions that the given
# requirements need, transitively, with their files (located, relative to the site directory).
_CLOSURE = r"""
import json, re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

dists = {}
for dist in metadata.distributions():
    dists.setdefault(norm(dist.metadata["Name"]), dist)
todo = [Requirement(r) for r in json.loads(sys.argv[1])]
seen, out, missing = set(), [], []
while todo:
    req = todo.pop()
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    key = norm(req.name)
    if key in seen:
        continue
    seen.add(key)
    dist = dists.get(key)
    if dist is None or not req.specifier.contains(dist.version, prereleases=True):
        missing.append(str(req) + ("" if dist is None else " (installed: " + dist.version + ")"))
        continue
    files = []
    for f in dist.files or []:
        parts = f.parts
        if parts and parts[0] == "..":
            continue  # scripts and data outside the site directory: not needed by the plugin
        if "__pycache__" in parts or f.name.endswith(".pyc") or f.name == "direct_url.json":
            continue
        files.append([str(dist.locate_file(f)), "/".join(parts)])
    out.append({"name": dist.metadata["Name"], "version": dist.version, "files": files})
    for r in dist.requires or []:
        todo.append(Requirement(r))
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "dists": out, "missing": missing}))
"""


class BuildError(Exception):
    """The package cannot be built; the message says why."""


def run(argv: Sequence[str], **kwargs: object) -> str:
    """Run a command, return its standard output; its standard error goes into the error."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return str(proc.stdout)


def wheel_metadata(wheel: Path) -> Tuple[str, List[str]]:
    """(version, runtime requirements) of the bareos-hyperv wheel."""
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            raise BuildError(f"{wheel} has no METADATA")
        text = archive.read(name).decode("utf-8")
        if not any(n.endswith("/plugin/bareos-fd-hyperv.py") for n in archive.namelist()):
            raise BuildError(f"{wheel} does not contain the plugin entry file")
    headers = text.split("\n\n", 1)[0].splitlines()
    version = next(h.split(":", 1)[1].strip() for h in headers if h.startswith("Version:"))
    requires = [h.split(":", 1)[1].strip() for h in headers if h.startswith("Requires-Dist:")]
    return version, [r for r in requires if not re.search(r"\bextra\s*==", r)]


def debian_version(version: str, revision: str) -> str:
    """PEP 440 -> Debian: pre-releases sort before the release (``1.0rc1`` -> ``1.0~rc1``)."""
    return re.sub(r"\.?(a|b|rc|dev)(\d*)", r"~\1\2", version) + "-" + revision


def python_version(python: str) -> str:
    """``X.Y`` of an interpreter."""
    return run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).strip()


def make_venv(python: str, root: Path) -> Path:
    """An empty virtual environment of ``python`` at ``root`` + VENV."""
    venv = root / VENV.lstrip("/")
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([python, "-m", "venv", "--without-pip", str(venv)])
    return venv


def pip_install(venv: Path, wheel: Path, *, deps: bool, pip_args: Sequence[str]) -> None:
    """Install the wheel (and its dependencies from the index, if ``deps``) into the environment."""
    argv = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-compile",
            "--disable-pip-version-check", "--no-warn-script-location", *pip_args, str(wheel)]
    if not deps:
        argv.insert(argv.index("--no-compile"), "--no-deps")
    run(argv, env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"})


def copy_deps(source_python: str, requires: List[str], site: Path, target_version: str) -> List[str]:
    """Copy the installed dependency closure of ``requires`` from ``source_python``'s environment."""
    found = json.loads(run([source_python, "-c", _CLOSURE, json.dumps(requires)]))
    if found["python"] != target_version:
        raise BuildError(f"{source_python} is Python {found['python']}, the package is for Python {target_version}: "
                         f"compiled modules would not load")
    if found["missing"]:
        raise BuildError(f"{source_python} lacks: {', '.join(found['missing'])}")
    names = []
    for dist in found["dists"]:
        for src, rel in dist["files"]:
            target = site / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        names.append(f"{dist['name']} {dist['version']}")
    return sorted(names, key=str.lower)


def relocate(root: Path, venv: Path) -> None:
    """Make the staged environment right for its final place ``VENV``."""
    staged = str(venv)
    for name in ACTIVATE:
        (venv / "bin" / name).unlink(missing_ok=True)
    version = re.sub(r"^python", "", next(p.name for p in (venv / "lib").iterdir() if p.name.startswith("python")))
    for script in (venv / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!") and staged.encode() in data.split(b"\n", 1)[0]:
            rest = data.split(b"\n", 1)[1]
            script.write_bytes(f"#!{VENV}/bin/python{version}".encode() + b"\n" + rest)
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(staged, VENV), encoding="utf-8")
    for cache in sorted(root.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for direct in root.rglob("direct_url.json"):
        direct.unlink()
    leftovers = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and not p.is_symlink() and staged.encode() in p.read_bytes()]
    leftovers += [str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink() and staged in os.readlink(p)]
    if leftovers:
        raise BuildError("paths of the build machine remain in: " + ", ".join(sorted(leftovers)))


def normalise_modes(root: Path) -> None:
    """Directories 0755, files 0644, commands in bin/ 0755 (Debian policy; umask-independent)."""
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.parent.name == "bin" else 0o644)


def installed_size(root: Path) -> int:
    """KiB, as dpkg-gencontrol counts: each file rounded up to a KiB, one per directory and link."""
    total = 0
    for path in root.rglob("*"):
        if path.is_symlink() or path.is_dir():
            total += 1
        else:
            total += (path.stat().st_size + 1023) // 1024
    return total


def architecture(root: Path) -> str:
    """``all`` unless compiled code is shipped, then this machine's Debian architecture."""
    if any(root.rglob("*.so")) or any(root.rglob("*.so.*")):
        return run(["dpkg", "--print-architecture"]).strip()
    return "all"


def gzip_n(source: Path, target: Path) -> None:
    """``gzip -9n``: no name, no time stamp (reproducible)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
        shutil.copyfileobj(src, out)


def add_docs(root: Path) -> None:
    """copyright, changelog.Debian.gz, README.md.gz, install.md.gz and the example configuration."""
    doc = root / DOC_DIR.lstrip("/")
    doc.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "copyright", doc / "copyright")
    gzip_n(HERE / "changelog", doc / "changelog.Debian.gz")
    repo = PACKAGING.parent
    for name, src in (("README.md.gz", repo / "README.md"), ("install.md.gz", repo / "docs" / "install.md")):
        if src.is_file():
            gzip_n(src, doc / name)
    examples = PACKAGING / "examples"
    if examples.is_dir():
        shutil.copytree(examples, doc / "examples")


def control_files(root: Path, version: str, python: str) -> None:
    """DEBIAN/: control (from control.in), maintainer scripts, md5sums."""
    debian = root / "DEBIAN"
    debian.mkdir()
    size = installed_size(root)
    arch = architecture(root)
    text = (HERE / "control.in").read_text(encoding="utf-8")
    for key, value in (("VERSION", version), ("ARCH", arch), ("INSTALLED_SIZE", str(size)),
                       ("PYTHON", f"python{python}")):
        text = text.replace(f"@{key}@", value)
    (debian / "control").write_text(text, encoding="utf-8")
    for script in ("postinst", "prerm", "postrm"):
        shutil.copyfile(HERE / script, debian / script)
        (debian / script).chmod(0o755)
    sums = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and debian not in path.parents:
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(root)}\n")  # noqa: S324
    (debian / "md5sums").write_text("".join(sums), encoding="utf-8")
    (debian / "control").chmod(0o644)
    (debian / "md5sums").chmod(0o644)


def build(wheel: Path, output: Path, *, python: str, deps_from: Optional[str], pip_args: Sequence[str],
          revision: str, compression: str, keep: Optional[Path]) -> Path:
    """Build the .deb into ``output``; returns its path."""
    if shutil.which("dpkg-deb") is None:
        raise BuildError("dpkg-deb not found: build the Debian package on Debian or Ubuntu")
    upstream, requires = wheel_metadata(wheel)
    python = os.path.realpath(shutil.which(python) or python)
    pyver = python_version(python)
    work = Path(tempfile.mkdtemp(prefix="bareos-hyperv-deb-"))
    try:
        root = work / "root"
        venv = make_venv(python, root)
        site = venv / "lib" / f"python{pyver}" / "site-packages"
        pip_install(venv, wheel, deps=deps_from is None, pip_args=pip_args)
        if deps_from is not None:
            bundled = copy_deps(deps_from, requires, site, pyver)
            print("bundled: " + ", ".join(bundled))
        plugins = root / PLUGIN_DIR.lstrip("/")
        plugins.mkdir(parents=True)
        run([str(venv / "bin" / "python"), "-B", "-m", "bareos_hyperv.cli", "install-plugin",
             "--plugin-dir", str(plugins), "--package-path", f"{VENV}/lib/python{pyver}/site-packages"])
        relocate(root, venv)
        (root / "usr" / "bin").mkdir(parents=True)
        os.symlink("../lib/bareos-hyperv/bin/bareos-hyperv", root / "usr" / "bin" / "bareos-hyperv")
        add_docs(root)
        normalise_modes(root)
        version = debian_version(upstream, revision)
        control_files(root, version, pyver)
        arch = (root / "DEBIAN" / "control").read_text(encoding="utf-8").split("Architecture: ")[1].split()[0]
        output.mkdir(parents=True, exist_ok=True)
        deb = output / f"{PACKAGE}_{version}_{arch}.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "1764849600")}
        run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)], env=env)
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(root, keep, symlinks=True)
        return deb
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--wheel", required=True, type=Path, help="the bareos-hyperv wheel to package")
    parser.add_argument("--output", type=Path, default=Path("dist"), help="where the .deb goes (default: dist)")
    parser.add_argument("--python", default="/usr/bin/python3",
                        help="the target system's python3 (default /usr/bin/python3: Debian's own)")
    parser.add_argument("--deps-from", metavar="PYTHON",
                        help="copy the dependencies from this interpreter's environment instead of pip (offline)")
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for pip, e.g. --pip-arg=--no-index --pip-arg=--find-links=DIR")
    parser.add_argument("--revision", default="1", help="Debian revision (default 1)")
    parser.add_argument("--compression", default="xz", choices=["xz", "gzip", "zstd", "none"],
                        help="dpkg-deb compression (default xz, Debian's)")
    parser.add_argument("--keep-root", type=Path, help="also copy the package's file tree here (for inspection)")
    args = parser.parse_args(argv)
    try:
        deb = build(args.wheel.resolve(), args.output.resolve(), python=args.python, deps_from=args.deps_from,
                    pip_args=args.pip_arg, revision=args.revision, compression=args.compression,
                    keep=args.keep_root)
    except BuildError as exc:
        sys.stderr.write(f"build.py: {exc}\n")
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
