"""The packages a Bareos administrator installs: wheel, sdist and the Debian package.

Built from this checkout the way a release builds them (``python -m build``, then
``packaging/debian/build.py``), their file lists checked, and the Debian package installed into a
scratch root with dpkg (maintainer scripts included), from which the fd emulation loads the plugin
module and runs a backup against the simulator: the agent must run on the package's own interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator, List, Set

import pytest

from fdsim.fd import FdSim
from hvsim.simulation import Simulation

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "packaging" / "bareos-fd-hyperv.py"
PACKAGE = "bareos-filedaemon-hyperv-python-plugin"
SYSTEM_PYTHON = "/usr/bin/python3"
PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"
# Modules of the test rig that must never reach an installation (two would shadow Bareos's own).
RIG = {"hvsim", "fdsim", "bareosfd", "BareosFdWrapper", "BareosFdPluginBaseclass", "tests", "bench"}


def _run(argv: List[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist, then the wheel built from the sdist (as ``python -m build`` does), without network."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)])
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("bareos_hyperv-*-py3-none-any.whl")
    return wheel


def _tops(names: List[str]) -> Set[str]:
    return {n.split("/")[0] for n in names}


def test_wheel_holds_the_product_the_entry_file_and_the_schema(dist: Path) -> None:
    with zipfile.ZipFile(_wheel(dist)) as wheel:
        names = wheel.namelist()
        entry = wheel.read("bareos_hyperv/plugin/bareos-fd-hyperv.py")
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(f"{info}/METADATA").decode()
        scripts = wheel.read(f"{info}/entry_points.txt").decode()
    assert _tops(names) == {"bareos_hyperv", info}
    assert not {Path(n).stem for n in names} & RIG
    assert entry == ENTRY.read_bytes()
    for needed in ("bareos_hyperv/manifest/manifest.xsd", "bareos_hyperv/py.typed", "bareos_hyperv/fd/plugin.py",
                   "bareos_hyperv/agent/__main__.py", "bareos_hyperv/cli/install.py"):
        assert needed in names
    assert {f"{info}/licenses/LICENSE", f"{info}/LICENSE"} & set(names)  # where the setuptools version puts it
    assert "License: AGPL-3.0-or-later" in metadata
    assert [line.strip() for line in scripts.splitlines() if "=" in line] == [
        "bareos-hyperv = bareos_hyperv.cli.__main__:main"]


def test_sdist_holds_the_product_and_its_packaging_not_the_test_rig(dist: Path) -> None:
    # bareos_hyperv-*: the PEP 625 name of newer setuptools
    (sdist,) = [*dist.glob("bareos-hyperv-*.tar.gz"), *dist.glob("bareos_hyperv-*.tar.gz")]
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    tops = _tops(names)
    assert not tops & RIG
    for needed in ("LICENSE", "setup.py", "setup.cfg", "pyproject.toml", "packaging/bareos-fd-hyperv.py",
                   "packaging/debian/build.py", "packaging/debian/control.in", "packaging/rpm/" + PACKAGE + ".spec",
                   "bareos_hyperv/manifest/manifest.xsd", "docs/install.md"):
        assert needed in names


def test_licence_is_the_agpl(dist: Path) -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("GNU AFFERO GENERAL PUBLIC LICENSE")
    assert "Version 3, 19 November 2007" in text


def test_install_plugin_from_the_wheel_finds_the_entry_file_in_the_package(dist: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(_wheel(dist)) as wheel:
        wheel.extractall(unpacked)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    proc = _run([sys.executable, "-m", "bareos_hyperv.cli", "install-plugin", "--plugin-dir", str(plugins)],
                env=env, cwd=str(tmp_path))
    assert "installed:" in proc.stdout and "bareos-filedaemon-python3-plugin" in proc.stdout
    text = (plugins / "bareos-fd-hyperv.py").read_text(encoding="utf-8")
    assert f"_sys.path.append({str(unpacked)!r})" in text
    start, end = text.index("\n# Installed by"), text.index("\nfrom BareosFdWrapper")
    assert text[:start] + text[end:] == ENTRY.read_text(encoding="utf-8")  # the shipped file plus the preamble
    again = _run([sys.executable, "-m", "bareos_hyperv.cli", "install-plugin", "--plugin-dir", str(plugins)],
                 env=env, cwd=str(tmp_path))
    assert "unchanged:" in again.stdout
    assert (plugins / "bareos-fd-hyperv.py").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------- the Debian package

def _system_python_matches() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() == str(sys.version_info[:2])


needs_deb = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None
                               or not _system_python_matches(),
                               reason="the Debian package is built for Debian's python3 of the same version")


@pytest.fixture(scope="module")
def deb(dist: Path) -> Path:
    """The .deb, its dependencies copied from this test environment (no network)."""
    out = dist / "deb"
    proc = _run([sys.executable, str(REPO / "packaging" / "debian" / "build.py"), "--wheel", str(_wheel(dist)),
                 "--output", str(out), "--deps-from", sys.executable, "--python", SYSTEM_PYTHON])
    return Path(proc.stdout.strip().splitlines()[-1])


def _contents(deb: Path) -> List[str]:
    listing = _run(["dpkg-deb", "--contents", str(deb)]).stdout.splitlines()
    return [line.split(None, 5)[5] for line in listing]


@needs_deb
def test_deb_control_and_file_list(deb: Path) -> None:
    pyver = PYVER
    assert deb.name.startswith(f"{PACKAGE}_0.1.0-1_")
    fields = dict(line.split(": ", 1) for line in _run(["dpkg-deb", "--field", str(deb)]).stdout.splitlines()
                  if ": " in line and not line.startswith(" "))
    assert fields["Package"] == PACKAGE
    assert fields["Depends"].split(", ")[:2] == [f"python{pyver}", "bareos-filedaemon-python3-plugin"]
    assert int(fields["Installed-Size"]) > 1000
    entries = _contents(deb)
    names = {e.split(" -> ")[0].rstrip("/") for e in entries}
    site = f"./usr/lib/bareos-hyperv/lib/python{pyver}/site-packages"
    for needed in ("./usr/lib/bareos/plugins/bareos-fd-hyperv.py", "./usr/lib/bareos-hyperv/pyvenv.cfg",
                   f"./usr/lib/bareos-hyperv/bin/python{pyver}", "./usr/lib/bareos-hyperv/bin/bareos-hyperv",
                   "./usr/bin/bareos-hyperv", f"./usr/share/doc/{PACKAGE}/copyright",
                   f"./usr/share/doc/{PACKAGE}/changelog.Debian.gz", f"{site}/bareos_hyperv/fd/plugin.py",
                   f"{site}/bareos_hyperv/manifest/manifest.xsd"):
        assert needed in names, needed
    for module in ("winrm", "requests_ntlm", "lxml", "smbprotocol", "smbclient", "spnego", "cryptography",
                   "requests", "urllib3"):
        assert f"{site}/{module}" in names, module
    assert "./usr/bin/bareos-hyperv -> ../lib/bareos-hyperv/bin/bareos-hyperv" in entries
    assert f"./usr/lib/bareos-hyperv/bin/python{pyver} -> /usr/bin/python{pyver}" in entries
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if Path(n).name in ("activate", "Activate.ps1", "pip")]
    tops = {Path(n[len(site) + 1:].split("/")[0]).stem for n in names if n.startswith(site + "/")}
    assert not tops & RIG
    assert not [n for n in names if n.startswith("./usr/lib/bareos/plugins/") and not n.endswith(
        ("/plugins", "bareos-fd-hyperv.py"))]


@pytest.fixture(scope="module")
def scratch(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package installed with dpkg into a scratch root (postinst run without chroot), purged after."""
    root = tmp_path_factory.mktemp("scratch-root")
    for sub in ("info", "updates", "triggers"):
        (root / "var" / "lib" / "dpkg" / sub).mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").touch()
    dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "--log=/dev/null"]
    if os.geteuid() != 0:
        dpkg.append("--force-not-root")
    _run([*dpkg, "--install", str(deb)])
    yield root
    _run([*dpkg, "--purge", PACKAGE])
    left = [str(p.relative_to(root)) for p in root.rglob("*") if "var/lib/dpkg" not in str(p.relative_to(root))
            and p.is_file()]
    assert left == [], "purge left files behind"


@needs_deb
def test_scratch_install_compiles_and_runs_the_command(scratch: Path) -> None:
    venv = scratch / "usr" / "lib" / "bareos-hyperv"
    assert list(venv.rglob("__pycache__")), "postinst byte-compiles the environment"
    # cwd: `python -m`/`-c` put the current directory first on sys.path; the checkout's is not wanted.
    proc = _run([str(venv / "bin" / "python3"), "-m", "bareos_hyperv.cli", "--version"], cwd="/")
    assert proc.stdout.strip() == "bareos-hyperv 0.1.0"
    where = _run([str(venv / "bin" / "python3"), "-c", "import bareos_hyperv, lxml, winrm, smbprotocol; "
                                                       "print(bareos_hyperv.__file__)"], cwd="/").stdout
    assert where.startswith(str(venv))
    entry = (scratch / "usr" / "lib" / "bareos" / "plugins" / "bareos-fd-hyperv.py").read_text(encoding="utf-8")
    pyver = PYVER
    assert f"_sys.path.append('/usr/lib/bareos-hyperv/lib/python{pyver}/site-packages')" in entry


@needs_deb
@pytest.mark.samba
def test_fd_loads_the_installed_plugin_and_backs_up_a_vm(scratch: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pyver = PYVER
    venv = scratch / "usr" / "lib" / "bareos-hyperv"
    site = venv / "lib" / f"python{pyver}" / "site-packages"
    plugins = scratch / "usr" / "lib" / "bareos" / "plugins"
    with Simulation(tmp_path / "sim", samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        smb = ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items()))
        # On a real fd the entry file's preamble finds /usr/lib/bareos-hyperv; in the scratch root,
        # module_path= names the same directory below the root (the fd puts it first on sys.path).
        plugin = ":".join([
            "python3:module_name=bareos-fd-hyperv", f"module_path={site}", "host=HVCLUSTER01", "vm=web01",
            f"credentials_file={creds}", "host_map=" + sim.host_map_option().replace(":", "\\:"),
            "smb_host_map=" + smb.replace(":", "\\:"), "timeout=120"])
        monkeypatch.chdir(tmp_path)  # the agent inherits the fd's directory, never the checkout
        job = FdSim(tmp_path / "store").backup(plugin, plugin_dir=plugins)
    assert job.status == "T", job.log()
    assert any(f.fname.endswith("/web01/manifest.xml") for f in job.files)
    # The fd side found the package in the scratch root, so the agent's interpreter (derived from
    # where the package lives: agent_python's default) is the package's own environment's.
    started = [text for _, text in job.debug_messages if "agent started" in text]
    assert started and all(f"{venv}/bin/python{pyver} -m bareos_hyperv.agent" in t for t in started), started
