"""Which python3 runs the agent, for every install layout, without ``agent_python=`` (issue 11, point 5).

Each layout is a temporary directory tree shaped like the real one; its interpreters are small
wrappers around this Python started with ``-S`` (no site directories), seeing exactly the
directories that interpreter would see on a real system, so the probe decides as it would there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.fd.agent_process import (
    AGENT_DEPENDENCIES,
    agent_python_candidates,
    find_agent_python,
    probe_agent_python,
)

PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
REAL = os.path.realpath(sys.executable)


def _package(site: Path, *, deps: bool = True) -> Path:
    """A ``bareos_hyperv`` (and, with ``deps``, the agent's dependencies) installed into ``site``."""
    pkg = site / "bareos_hyperv"
    (pkg / "fd").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "fd" / "__init__.py").write_text("")
    if deps:
        _deps(site, AGENT_DEPENDENCIES)
    return pkg


def _deps(site: Path, names: Iterable[str]) -> None:
    for name in names:
        (site / name).mkdir(parents=True, exist_ok=True)
        (site / name / "__init__.py").write_text("")


def _python(path: Path, *sees: Path) -> Path:
    """An interpreter at ``path`` whose sys.path holds ``sees`` (after any PYTHONPATH it is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dirs = ":".join(str(s) for s in sees)
    path.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{dirs}" exec {REAL} -S "$@"\n')
    path.chmod(0o755)
    return path


def test_pip_into_a_virtual_environment(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / PY / "site-packages"
    pkg = _package(site)
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(venv / "bin" / PY)


def test_debian_pip_break_system_packages_into_usr_local(tmp_path: Path) -> None:
    # pip install --break-system-packages as root: /usr/local/lib/python3.X/dist-packages, read by
    # Debian's /usr/bin/python3.X; there is no /usr/local/bin/python3 (the failure the issue reports)
    site = tmp_path / "usr/local/lib" / PY / "dist-packages"
    pkg = _package(site)
    system = _python(tmp_path / "usr/bin" / PY, site)
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(system)


def test_usr_local_with_a_source_built_python_that_does_not_see_dist_packages(tmp_path: Path) -> None:
    site = tmp_path / "usr/local/lib" / PY / "dist-packages"
    pkg = _package(site)
    _python(tmp_path / "usr/local/bin" / PY)  # a python built from source: site-packages only
    system = _python(tmp_path / "usr/bin/python3", site)
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(system)


def test_debian_package_private_virtual_environment(tmp_path: Path) -> None:
    # packaging/debian/build.py: /usr/lib/bareos-hyperv, whose bin/ keeps python3.X only
    site = tmp_path / "usr/lib/bareos-hyperv/lib" / PY / "site-packages"
    pkg = _package(site)
    venv_python = _python(tmp_path / "usr/lib/bareos-hyperv/bin" / PY, site)
    _python(tmp_path / "usr/bin/python3")  # Debian's own: without the private environment's packages
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(venv_python)


def test_rpm_private_environment_in_lib64(tmp_path: Path) -> None:
    # packaging/rpm: %{_libdir}/bareos-hyperv/lib/python3.9/site-packages
    site = tmp_path / "usr/lib64/bareos-hyperv/lib/python3.9/site-packages"
    pkg = _package(site)
    venv_python = _python(tmp_path / "usr/lib64/bareos-hyperv/bin/python3", site)
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(venv_python)


def test_rhel_system_site_packages(tmp_path: Path) -> None:
    site = tmp_path / "usr/lib64/python3.9/site-packages"
    pkg = _package(site)
    system = _python(tmp_path / "usr/bin/python3.9", site)
    assert agent_python_candidates(str(pkg), system_bin=str(tmp_path / "usr/bin")).count(str(system)) == 1
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(system)


def test_pip_user_site(tmp_path: Path) -> None:
    site = tmp_path / "home/bareos/.local/lib" / PY / "site-packages"
    pkg = _package(site)
    system = _python(tmp_path / "usr/bin/python3", site)
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(system)


def test_module_path_checkout_with_its_venv(tmp_path: Path) -> None:
    # module_path=/srv/bareos-hyperv: the package is not in a site directory; the agent gets the
    # checkout on PYTHONPATH (agent_environment), and the .venv has the dependencies
    pkg = _package(tmp_path / "srv/bareos-hyperv", deps=False)
    deps = tmp_path / "srv/bareos-hyperv/.venv/lib" / PY / "site-packages"
    _deps(deps, AGENT_DEPENDENCIES)
    venv_python = _python(tmp_path / "srv/bareos-hyperv/.venv/bin/python3", deps)
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(venv_python)


def test_missing_dependencies_are_named_with_every_interpreter_tried(tmp_path: Path) -> None:
    site = tmp_path / "usr/local/lib" / PY / "dist-packages"
    pkg = _package(site, deps=False)
    _deps(site, ["winrm", "requests"])
    exact = _python(tmp_path / "usr/bin" / PY, site)
    generic = _python(tmp_path / "usr/bin/python3", site)
    with pytest.raises(ConfigurationError) as caught:
        find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin"))
    text = str(caught.value)
    assert text.startswith("cannot tell which python3 has bareos-hyperv installed")
    assert f"bareos_hyperv was imported from {pkg}" in text
    assert f"{exact} (lacks lxml, smbprotocol, spnego, cryptography)" in text
    assert f"{generic} (lacks lxml, smbprotocol, spnego, cryptography)" in text
    assert "agent_python=" in caught.value.what_to_do


def test_an_interpreter_with_another_copy_of_the_package_is_passed_over(tmp_path: Path) -> None:
    site = tmp_path / "usr/local/lib" / PY / "dist-packages"
    pkg = _package(site)
    other = tmp_path / "opt/old"
    _package(other)
    stale = _python(tmp_path / "usr/bin" / PY, other, site)  # finds the other copy first
    good = _python(tmp_path / "usr/bin/python3", site)
    assert probe_agent_python(str(stale), str(pkg)) == f"finds another bareos_hyperv, in {other / 'bareos_hyperv'}"
    assert find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin")) == str(good)


def test_nothing_there_says_what_was_looked_for(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "venv/lib" / PY / "site-packages")
    with pytest.raises(ConfigurationError, match=r"none of .*venv/bin/python3.* exists") as caught:
        find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin"))
    assert "agent_python=" in caught.value.what_to_do


def test_a_broken_interpreter_is_reported(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "venv/lib" / PY / "site-packages")
    broken = tmp_path / "venv/bin/python3"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(ConfigurationError, match=r"is not a working python3 \(error while loading shared"):
        find_agent_python(str(pkg), system_bin=str(tmp_path / "usr/bin"))


def test_this_checkout_is_found_and_probed() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert find_agent_python(str(repo / "bareos_hyperv")) == str(repo / ".venv" / "bin" / "python3")
