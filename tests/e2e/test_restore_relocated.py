"""Restores to a directory with regexwhere=, strip_prefix= and add_prefix= (issue 11, item 10).

With these the director sends ``regexwhere=`` instead of ``where=``: the fd rewrites each ofname
and leaves bVarWhere None (reference §12), so "where is empty" no longer means "into Hyper-V".
Each restore must land where the administrator asked, byte-identical, and touch no VM.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict

import pytest

from fdsim.fd import JobResult

from .conftest import PLUGIN_DIR, REPO

pytestmark = pytest.mark.usefixtures("no_agent_left")

BASE = "@hyperv/HVCLUSTER01/web01"


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _assert_tree(tree: Path) -> None:
    """manifest, configuration and disks of web01 below ``tree``, as SHA256SUMS says."""
    sums = (tree / "SHA256SUMS").read_text().splitlines()
    digests: Dict[str, str] = dict(reversed(line.split("  ", 1)) for line in sums)
    assert any(name.startswith("disks/") for name in digests)
    for name, digest in digests.items():
        assert _sha(tree / name) == digest, name
    assert not list(tree.rglob("*.partial"))


def _restore(estate: Any, **relocation: str) -> JobResult:
    return estate.fd.restore(None, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO], **relocation)


def test_regexwhere_strip_prefix_and_add_prefix_restore_into_the_directory_asked_for(
        estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    vms_before = sorted(vm.name for vm in world.vms.values())

    # regexwhere: the measured example, ``!^@hyperv!/x/@hyperv!``
    rx = tmp_path / "rx"
    back = _restore(estate, regexwhere=f"!^@hyperv!{rx}/@hyperv!")
    assert back.status == "T", back.log()
    assert back.report is not None and back.report.termination == "Restore OK", back.log()
    _assert_tree(rx / BASE)

    # strip_prefix + add_prefix: the VM's folder straight below the directory
    flat = tmp_path / "flat"
    back = _restore(estate, strip_prefix="@hyperv/HVCLUSTER01/", add_prefix=f"{flat}/")
    assert back.status == "T", back.log()
    _assert_tree(flat / "web01")

    # add_prefix alone
    pre = tmp_path / "pre"
    back = _restore(estate, add_prefix=f"{pre}/")
    assert back.status == "T", back.log()
    _assert_tree(pre / BASE)

    # no VM was imported, replaced or changed by any of them
    assert sorted(vm.name for vm in world.vms.values()) == vms_before


def test_a_relative_relocation_is_refused_with_what_to_write(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    vms_before = sorted(vm.name for vm in estate.sim.world.vms.values())
    back = _restore(estate, strip_prefix="@hyperv/")  # HVCLUSTER01/web01/...: relative names
    assert back.status != "T", back.log()
    assert "absolute" in back.log(), back.log()
    assert sorted(vm.name for vm in estate.sim.world.vms.values()) == vms_before
