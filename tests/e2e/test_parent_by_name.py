r"""A differencing disk whose locators do not lead to its parent (issue #9 point 11).

A VM's files copied by hand from another folder keep, in each differencing child, the paths the
parent had there: ``Msvm_VirtualHardDiskSettingData.ParentPath`` (the child's absolute locator)
names a file that is not there, and the relative locator no longer fits either.  The parent still
sits next to the child under the name the child records: a VHD header's Parent Unicode Name, and
for a VHDX (no name field, [MS-VHDX] 2.6.2.6) the file name in its locator paths.  The backup must
find it, say so, and save the whole chain; when the parent is nowhere, the job fails naming every
path it tried.

The children are made by hvsim's own VHD/VHDX writer (qemu-img cannot create differencing VHD or
VHDX files) and their locators made stale with a same-length binary patch of the UTF-16LE paths.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from bareos_hyperv.manifest.document import from_xml
from hvsim import disks as simdisks
from hvsim import vhd as simvhd
from hvsim import vhdx as simvhdx
from hvsim.world.scenario import STANDALONE, MiB
from hvsim.world.state import SUB_VHD, DiskSpec

pytestmark = pytest.mark.usefixtures("no_agent_left")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _patch(path: Path, old: str, new: str) -> None:
    """Replace a UTF-16LE path inside the file by another of the same length (the locator's bytes)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    raw = old.encode("utf-16-le")
    assert data.count(raw) == 1, (path, old)
    path.write_bytes(data.replace(raw, new.encode("utf-16-le")))


def _vm_on_a_moved_chain(world: Any, name: str, fmt: str) -> Dict[str, str]:
    """VM ``name`` (off) whose drive uses a child of ``base.<fmt>``, both in its folder; the child's
    locators name ``...\\oldvm..\\...`` and ``.\\b-19.<fmt>`` (nowhere).  Returns host path -> local path."""
    folder = f"D:\\Hyper-V\\{name}\\Virtual Hard Disks"
    ext = "avhd" if fmt == "vhd" else "avhdx"
    base, child = f"{folder}\\base.{fmt}", f"{folder}\\{name}.{ext}"
    with world.lock:
        vm = world.add_vm(STANDALONE, name, state="off", root=f"D:\\Hyper-V\\{name}", seed=7,
                          disks_=[DiskSpec(base, fmt=fmt, size=8 * MiB, fill_ratio=0.5)])
        base_local, child_local = world.local(vm.node, base), world.local(vm.node, child)
        simdisks.create_differencing(child_local, base_local, base, child_host_path=child)
        simdisks.guest_write(child_local, MiB, b"written in the child " * 1000, parent=base_local)
        for setting in vm.config.settings:
            if setting.subtype == SUB_VHD:
                setting.props["HostResource"] = [child]
        world.write_live_config(vm)
    if fmt == "vhd":
        with simvhd.Vhd.open(child_local) as d:
            absolute, relative = d.locator_path(simvhd.PLATFORM_W2KU), d.locator_path(simvhd.PLATFORM_W2RU)
        with simvhd.Vhd.open(child_local) as d:
            assert d.dyn is not None and d.dyn.parent_name == "base.vhd"
    else:
        with simvhdx.Vhdx.open(child_local) as x:
            absolute, relative = x.locator_value("absolute_win32_path"), x.locator_value("relative_path")
    assert absolute and relative == f".\\base.{fmt}", (absolute, relative)
    _patch(child_local, absolute, absolute.replace(f"\\{name}\\", f"\\{name.replace('moved', 'oldvm')}\\"))
    _patch(child_local, relative, f".\\b-19.{fmt}")
    return {base: str(base_local), child: str(child_local)}


def test_parents_found_next_to_the_child_by_name_and_the_chain_saved_whole(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    files = {**_vm_on_a_moved_chain(world, "moved01", "vhd"), **_vm_on_a_moved_chain(world, "moved02", "vhdx")}
    before = {host: _sha(Path(local)) for host, local in files.items()}

    job = estate.backup(host=STANDALONE, vm="moved01,moved02")
    assert job.status == "T", job.log()
    warnings = [m.text for m in job.messages if m.type_name == "M_WARNING"]
    for name, fmt in (("moved01", "vhd"), ("moved02", "vhdx")):
        stale = f"D:\\Hyper-V\\oldvm{name[-2:]}\\Virtual Hard Disks\\base.{fmt}"
        found = f"D:\\Hyper-V\\{name}\\Virtual Hard Disks\\base.{fmt}"
        assert any(stale in w and found in w and "found" in w for w in warnings), (stale, warnings)

    back = estate.restore_to(tmp_path / "r")
    assert back.status == "T", back.log()
    for name, fmt in (("moved01", "vhd"), ("moved02", "vhdx")):
        tree = tmp_path / "r" / "@hyperv" / STANDALONE / name
        manifest = from_xml((tree / "manifest.xml").read_bytes(), source="manifest.xml")
        (disk,) = manifest.disks
        folder = f"D:\\Hyper-V\\{name}\\Virtual Hard Disks"
        child, base = f"{folder}\\{name}.a{fmt}", f"{folder}\\base.{fmt}"
        assert [f.info.path for f in disk.chain] == [child, base]
        # The manifest records where the parent is, not the stale path written in the child.
        assert disk.chain[0].info.parent_path == base
        for f in disk.chain:
            copy = tree / "disks" / f"{f.index}-{f.info.path.rsplit(chr(92), 1)[1]}"
            assert _sha(copy) == before[f.info.path], f.info.path
        # qemu-img checks VHDX; for VHD (vpc) it has no check, but info parses the headers.
        check = subprocess.run(["qemu-img", "check" if fmt == "vhdx" else "info",
                                str(tree / "disks" / f"{disk.chain[1].index}-base.{fmt}")],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_parent_that_is_nowhere_fails_the_job_naming_every_path_tried(estate: Any) -> None:
    world = estate.sim.world
    files = _vm_on_a_moved_chain(world, "moved03", "vhdx")
    folder = "D:\\Hyper-V\\moved03\\Virtual Hard Disks"
    Path(files[f"{folder}\\base.vhdx"]).rename(Path(files[f"{folder}\\base.vhdx"]).with_name("golden-image.vhdx"))

    job = estate.backup(host=STANDALONE, vm="moved03")
    assert job.status != "T", job.log()
    fatal: List[str] = [m.text for m in job.messages if m.type_name in ("M_FATAL", "M_ERROR")]
    text = "\n".join(fatal)
    for tried in ("D:\\Hyper-V\\oldvm03\\Virtual Hard Disks\\base.vhdx",  # what Hyper-V reports
                  f"{folder}\\b-19.vhdx",  # the relative locator, next to the child
                  f"{folder}\\base.vhdx"):  # the locator's file name next to the child
        assert tried in text, (tried, text)
    assert "Set-VHD -ParentPath" in text, text
    vm = world.vm("moved03")
    assert world.snapshots(vm.id) == [], "the checkpoint of the failed job was left behind"
