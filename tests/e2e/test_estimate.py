"""bconsole ``estimate`` through the fd emulation against the simulated cluster: it lists what a Full
would save, with today's sizes, and changes nothing on any host (issue 11, point 3)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from .conftest import PLUGIN_DIR, REPO

pytestmark = pytest.mark.usefixtures("no_agent_left")

OK_LINE = re.compile(r"^2000 OK estimate files=(?P<files>[\d,]+) bytes=(?P<bytes>[\d,]+)$")


def _tree(root: Path) -> Dict[str, Tuple[bool, int, int]]:
    """Every file and folder below ``root``: (is a folder, size, mtime in ns)."""
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), 0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def _estimate(estate: Any, *, listing: bool = False, level: str = "F", **options: str) -> Any:
    return estate.fd.estimate(f"python3:module_name=bareos-fd-hyperv:{estate.options(**options)}", level=level,
                              listing=listing, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])


def test_estimate_lists_what_a_full_would_save_and_changes_nothing(estate: Any) -> None:
    world = estate.sim.world
    vms = {name: world.vm(name) for name in ("web01", "db01")}
    before = _tree(world.root)
    points = {name: len(world.reference_points(vm.id)) for name, vm in vms.items()}
    estate.sim.log.clear()

    est = _estimate(estate, listing=True, host="HVCLUSTER01", vm="web01,db01")

    assert est.status == "T", est.log()
    # What bconsole prints: the plugin's lines without a severity, one ls line per item, the fd's OK line.
    assert not any(line.startswith(("Fatal error", "Error:", "Warning:")) for line in est.console), est.log()
    ok = OK_LINE.match(est.console[-1])
    assert ok, est.log()
    assert int(ok["files"].replace(",", "")) == len(est.files)
    assert int(ok["bytes"].replace(",", "")) == est.bytes == sum(f.size for f in est.files)
    listed = [line for line in est.console if re.match(r"^-rw-r----- +\d+ ", line)]
    assert [line.rsplit("  ", 1)[1] for line in listed] == [f.fname for f in est.files]

    # Nothing changed: no checkpoint, no export, no staging folder, not a byte on any share.
    assert _tree(world.root) == before
    for name, vm in vms.items():
        assert world.snapshots(vm.id) == []
        assert len(world.reference_points(vm.id)) == points[name]
    methods = {r.method for r in estate.sim.log.records() if r.method}
    assert methods and all(m.startswith("Get") for m in methods), methods
    assert estate.sim.log.count(method="CreateSnapshot") == 0
    assert estate.sim.log.count(method="ExportSystemDefinition") == 0

    # The same items, with the same sizes for disks and configuration files, as a Full saves now.
    sizes = {f.fname: f.size for f in est.files}
    job = estate.backup(host="HVCLUSTER01", vm="web01,db01")
    assert job.status == "T", job.log()
    saved = {f.fname: f.size for f in job.files if not f.fname.endswith((".object.xml", ".object.json"))}
    assert sorted(saved) == sorted(sizes)
    for name, size in saved.items():
        if "/disks/" in name or name.endswith("/SHA256SUMS"):  # the digest lines' length follows from the names
            assert sizes[name] == size, name
        elif name.endswith(".vmcx"):
            assert sizes[name] > 0, name  # the VM's own configuration file, as it is now
    for vm in vms.values():
        disks = [f for f in est.files if f"/{vm.name}/disks/" in f.fname]
        assert disks and all(f.size > 0 for f in disks)


def test_estimate_of_an_incremental_counts_disks_in_full_and_takes_no_checkpoint(estate: Any) -> None:
    world = estate.sim.world
    full = estate.backup(host="HVCLUSTER01", vm="web01")
    assert full.status == "T", full.log()
    before = _tree(world.root)
    estate.sim.log.clear()

    est = _estimate(estate, level="I", host="HVCLUSTER01", vm="web01")

    assert est.status == "T", est.log()
    assert any("counts at its full size" in line for line in est.console), est.log()
    assert OK_LINE.match(est.console[-1])
    assert _tree(world.root) == before
    assert world.snapshots(world.vm("web01").id) == []
    assert estate.sim.log.count(method="CreateSnapshot") == 0


def test_estimate_with_an_unknown_vm_prints_the_error_and_ends_ok(estate: Any) -> None:
    est = _estimate(estate, host="HVCLUSTER01", vm="nosuchvm")
    assert est.status == "T"
    assert est.files == []
    assert any("nosuchvm" in line for line in est.console[:-1]), est.log()
    assert est.console[-1] == "2000 OK estimate files=0 bytes=0"
