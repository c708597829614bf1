"""Full backups through the Bareos fd emulation, against the simulated cluster over NTLM-encrypted HTTP and Samba."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path, PureWindowsPath
from typing import Any
from unittest import mock

import pytest

from bareos_hyperv.manifest.document import from_xml
from bareos_hyperv.model.backup import Consistency

pytestmark = pytest.mark.usefixtures("no_agent_left")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _assert_clean(estate: Any, vm_name: str) -> None:
    """No recovery checkpoint, no staging folder left behind."""
    vm = estate.sim.world.vm(vm_name)
    assert estate.sim.world.snapshots(vm.id) == []
    leftovers = [p for p in estate.sim.world.root.rglob("bareos-hyperv-staging*") if any(p.iterdir())]
    assert leftovers == []


def test_full_backup_of_a_running_clustered_vm_and_restore_to_a_directory(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    web = world.vm("web01")
    sources = {PureWindowsPath(p).name: world.local(web.node, p) for p in
               ("C:\\ClusterStorage\\Volume1\\web01\\Virtual Hard Disks\\web01-system.vhdx",
                "C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx")}
    before = {name: _sha(path) for name, path in sources.items()}

    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    names = estate.fd.list_files(job.jobid)
    base = "@hyperv/HVCLUSTER01/web01/"
    assert names[0] == base + "manifest.xml"
    assert names[-4] == base + "SHA256SUMS"
    # The final manifest, with every digest, as a restore object (a restore meets it before any data),
    # and each disk file's base for the next incremental.
    bases = [base + "base-0.object.json", base + "base-1.object.json"]
    assert names[-3:] == [base + "manifest.object.xml", *bases]
    objects = estate.fd.store.objects([job.jobid])
    assert [o.object_name for o in objects] == [base + "manifest.object.xml", *bases]
    final = from_xml(objects[0].inflated(), source="restore object")
    assert {p.name: p.sha256 for p in final.backup.parts} == {
        f"config/{web.id}.vmcx": mock.ANY, f"config/{web.id}.vmgs": mock.ANY, f"config/{web.id}.vmrs": mock.ANY,
        "disks/0-web01-system.vhdx": before["web01-system.vhdx"], "disks/1-web01-data.vhdx": before["web01-data.vhdx"]}
    assert [f.sha256 for d in final.disks for f in d.chain] == [before["web01-system.vhdx"],
                                                                before["web01-data.vhdx"]]
    assert {n[len(base):] for n in names} == {
        "manifest.xml", "SHA256SUMS", "manifest.object.xml", "base-0.object.json", "base-1.object.json",
        f"config/{web.id}.vmcx", f"config/{web.id}.vmgs", f"config/{web.id}.vmrs",
        "disks/0-web01-system.vhdx", "disks/1-web01-data.vhdx"}
    _assert_clean(estate, "web01")
    assert len(world.reference_points(web.id)) == 1

    restored = tmp_path / "restored"
    back = estate.restore_to(restored)
    assert back.status == "T", back.log()
    tree = restored / "@hyperv" / "HVCLUSTER01" / "web01"
    manifest = from_xml((tree / "manifest.xml").read_bytes(), source="manifest.xml")
    assert manifest.cluster is not None and manifest.cluster.name == "HVCLUSTER01"
    assert [n.name for n in manifest.cluster.nodes] == ["HV01", "HV02"]
    assert manifest.backup.consistency_achieved is Consistency.APPLICATION
    assert manifest.vm.ref.guid == web.id.upper()
    assert [len(d.chain) for d in manifest.disks] == [1, 1]
    digests = dict(reversed(line.split("  ", 1)) for line in (tree / "SHA256SUMS").read_text().splitlines())
    for index, name in enumerate(["web01-system.vhdx", "web01-data.vhdx"]):
        copy = tree / "disks" / f"{index}-{name}"
        assert _sha(copy) == digests[f"disks/{index}-{name}"] == before[name]
        check = subprocess.run(["qemu-img", "check", str(copy)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    assert _sha(tree / "manifest.xml") == digests["manifest.xml"]


def test_standalone_gen1_vm_skips_the_pass_through_disk_with_a_warning(estate: Any, tmp_path: Path) -> None:
    job = estate.backup(host="HVSTANDALONE01", vm="legacy01")
    assert job.status == "T", job.log()
    warnings = [m.text for m in job.messages if m.type_name == "M_WARNING"]
    assert any("pass-through" in w and "not backed up" in w for w in warnings), warnings
    names = estate.fd.list_files(job.jobid)
    disks = sorted(n.rsplit("/", 1)[1] for n in names if "/disks/" in n)
    assert any(d.endswith(".vhd") for d in disks) and any(d.endswith(".vhdx") for d in disks)
    _assert_clean(estate, "legacy01")
    back = estate.restore_to(tmp_path / "r")
    assert back.status == "T", back.log()
    tree = tmp_path / "r" / "@hyperv" / "HVSTANDALONE01" / "legacy01"
    manifest = from_xml((tree / "manifest.xml").read_bytes(), source="manifest.xml")
    assert manifest.cluster is None
    assert any(d.not_backed_up for d in manifest.disks)
    for disk in (tree / "disks").iterdir():
        check = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr


def test_vm_that_is_off_is_captured_cold(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01", vm="db01")
    assert job.status == "T", job.log()
    assert any("cold checkpoint" in m.text for m in job.messages), job.log()
    _assert_clean(estate, "db01")


def test_two_consecutive_jobs_in_one_fd_process(estate: Any) -> None:
    first = estate.backup(host="HVCLUSTER01", vm="web01")
    second = estate.backup(host="HVCLUSTER01", vm="db01,file01")
    assert (first.status, second.status) == ("T", "T"), first.log() + second.log()
    names = estate.fd.list_files(second.jobid)
    assert any("/db01/" in n for n in names) and any("/file01/" in n for n in names)
    # one VM after the other: db01's digests before file01's manifest
    order = [n for n in names if n.endswith(("manifest.xml", "SHA256SUMS"))]
    assert [n.rsplit("/", 2)[1] for n in order] == ["db01", "db01", "file01", "file01"]


def test_disks_streamed_by_samba_smbclient_when_the_fileset_asks(estate: Any, tmp_path: Path) -> None:
    """smb_mover=smbclient: Samba's own client moves the disk bytes; the result is the same."""
    world = estate.sim.world
    web = world.vm("web01")
    path = "C:\\ClusterStorage\\Volume2\\web01\\Virtual Hard Disks\\web01-data.vhdx"
    before = _sha(world.local(web.node, path))
    job = estate.backup(host="HVCLUSTER01", vm="web01", smb_mover="smbclient", agent_debug="yes")
    assert job.status == "T", job.log()
    debug = "\n".join(text for _level, text in job.debug_messages)
    assert "web01-data.vhdx through" in debug and "smbclient" in debug, debug[-2000:]
    back = estate.restore_to(tmp_path / "r")
    assert back.status == "T", back.log()
    copy = tmp_path / "r" / "@hyperv" / "HVCLUSTER01" / "web01" / "disks" / "1-web01-data.vhdx"
    assert _sha(copy) == before
    _assert_clean(estate, "web01")


def test_username_option_with_the_password_from_the_environment(estate: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials file: username= in the FileSet, the password only in the fd's environment."""
    monkeypatch.setenv("BAREOS_HYPERV_PASSWORD", estate.sim.password)
    monkeypatch.delenv("BAREOS_HYPERV_USERNAME", raising=False)
    job = estate.backup(host="HVCLUSTER01", vm="db01", credentials_file="", username=estate.sim.user)
    assert job.status == "T", job.log()
    assert estate.sim.password not in job.log()
    _assert_clean(estate, "db01")
