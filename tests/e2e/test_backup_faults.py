"""Full backups that go wrong at each step, through fdsim, hvsim (WinRM) and real Samba.

After every fault the simulator must show no recovery checkpoint of this plugin and no staging
folder, no agent may be left running, and the job status and messages must say what happened.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from fdsim.fd import FdSim, JobResult
from hvsim import faults as F
from hvsim.simulation import Simulation
from hvsim.world.scenario import MiB, build_cluster
from hvsim.world.state import VST_RECOVERY, DiskSpec, World

pytestmark = pytest.mark.usefixtures("no_agent_left")

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "packaging"
BIG_DISK = "C:\\ClusterStorage\\Volume1\\big01\\Virtual Hard Disks\\big01.vhdx"
# Bytes in the save set beyond which a disk of big01 is being streamed (manifest and config are < 1 MB).
MID_DISK = 8 * MiB


def _escape(value: str) -> str:
    return value.replace(":", "\\:")


@dataclass
class BigEstate:
    """A cluster with one running VM whose disk takes long enough to stream to act in the middle."""

    sim: Simulation
    fd: FdSim
    credentials_file: Path

    def plugin(self, **extra: str) -> str:
        base = {
            "credentials_file": str(self.credentials_file),
            "host_map": self.sim.host_map_option(),
            "smb_host_map": ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(self.sim.smb_map().items())),
            "timeout": "120",
        }
        base.update(extra)
        return "python3:module_name=bareos-fd-hyperv:" + ":".join(f"{k}={_escape(v)}" for k, v in base.items())

    def start_backup(self, **options: str) -> Any:
        return self.fd.start("backup", self.plugin(**options), plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])

    def backup(self, **options: str) -> JobResult:
        return self.fd.backup(self.plugin(**options), plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])


@pytest.fixture
def big(tmp_path: Path) -> Iterator[BigEstate]:
    world = World(tmp_path / "estate")
    build_cluster(world)
    world.add_vm("HV01", "big01", generation=2, version="9.0", state="running", clustered=True,
                 root="C:\\ClusterStorage\\Volume1\\big01", switches=["External-LAN"], seed=7,
                 disks_=[DiskSpec(BIG_DISK, size=1024 * MiB, fill_ratio=0.25)])
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield BigEstate(sim, FdSim(tmp_path / "store"), creds)


# ---------------------------------------------------------------------------------------- helpers


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _staging_leftovers(world: Any) -> List[Path]:
    return [p for p in world.root.rglob("bareos-hyperv-staging*") if p.is_dir() and any(p.iterdir())]


def _assert_clean(sim: Simulation, *vm_names: str) -> None:
    """No recovery checkpoint on these VMs, no staging folder anywhere."""
    for name in vm_names:
        assert sim.world.snapshots(sim.world.vm(name).id) == [], f"{name} still has a checkpoint"
    assert _staging_leftovers(sim.world) == []


def _texts(job: JobResult, type_name: str) -> List[str]:
    return [m.text for m in job.messages if m.type_name == type_name]


def _one_fatal(job: JobResult) -> str:
    fatals = _texts(job, "M_FATAL")
    assert len(fatals) >= 1, job.log()
    return fatals[0]


def _no_secret(sim: Simulation, job: JobResult) -> None:
    assert sim.password not in job.log()
    assert all(sim.password not in text for _level, text in job.debug_messages)


def _agents() -> List[int]:
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me and \
                        b"bareos_hyperv.agent" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _wait(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def _mid_disk(big: BigEstate, bg: Any) -> None:
    """Wait until big01's disk is being streamed into the save set."""
    volume = big.fd.store.volume_path(bg.jobid)
    _wait("a disk is streaming", lambda: volume.exists() and volume.stat().st_size > MID_DISK)
    assert big.sim.world.snapshots(big.sim.world.vm("big01").id) != []  # the checkpoint exists now


# ---------------------------------------------------------------------------------------- one fault per step


def test_wsman_fault_during_the_export_fails_the_job_and_removes_the_checkpoint(estate: Any) -> None:
    rule = estate.sim.faults.add(F.WSMAN_FAULT, "ExportSystemDefinition", reason="The WMI provider failed.")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired == 1
    assert job.status == "f", job.log()
    fatal = _one_fatal(job)
    assert "ExportSystemDefinition" in fatal or "Invoke" in fatal, fatal
    assert "HV01" in fatal and "The WMI provider failed." in fatal, fatal
    assert " - " in fatal  # what to do
    assert any("checkpoint was removed" in w for w in _texts(job, "M_WARNING")), job.log()
    assert estate.fd.list_files(job.jobid) == []
    _assert_clean(estate.sim, "web01")
    assert estate.sim.world.reference_points(estate.sim.world.vm("web01").id) == []
    _no_secret(estate.sim, job)


def test_checkpoint_the_agent_could_not_remove_is_removed_by_a_fresh_agent(estate: Any) -> None:
    estate.sim.faults.add(F.WSMAN_FAULT, "ExportSystemDefinition")
    destroy = estate.sim.faults.add(F.WSMAN_FAULT, "DestroySnapshot", reason="Provider is busy.")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert destroy.fired == 1
    assert job.status == "f", job.log()
    errors = _texts(job, "M_ERROR")
    assert any("could not remove the recovery checkpoint" in e for e in errors), job.log()
    warnings = _texts(job, "M_WARNING")
    assert any("starting a fresh agent" in w for w in warnings), job.log()
    assert any("removed the recovery checkpoint 'bareos-hyperv job" in w for w in warnings), job.log()
    assert any("cleanup done" in i for i in _texts(job, "M_INFO")), job.log()
    _assert_clean(estate.sim, "web01")


def test_hyper_v_job_failure_at_the_reference_point_fails_the_job_and_destroys_the_checkpoint(estate: Any) -> None:
    rule = estate.sim.faults.add(F.JOB_FAIL, "ConvertToReferencePoint", error_code=32768,
                                 error_description="The reference point could not be created.")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired == 1
    assert job.status == "f", job.log()
    fatal = _one_fatal(job)
    assert "The reference point could not be created." in fatal, fatal
    _assert_clean(estate.sim, "web01")
    assert estate.sim.world.reference_points(estate.sim.world.vm("web01").id) == []
    # the data went through; only the trailer (written after the reference point) is missing
    names = estate.fd.list_files(job.jobid)
    assert any(n.endswith("/disks/0-web01-system.vhdx") for n in names)
    assert not any(n.endswith("/SHA256SUMS") for n in names)


@pytest.mark.parametrize(("nth", "method"), [(1, "CreateSnapshot"), (5, "ExportSystemDefinition")])
def test_dropped_winrm_connection_after_the_host_acted_fails_the_job_and_cleans_up(
        estate: Any, nth: int, method: str) -> None:
    # The host carries the call out but the answer never arrives (the worst case: the agent cannot
    # know the outcome).  Invokes: CreateSnapshot, the checkpoint's renaming, one per disk file the
    # checkpoint froze (GetVirtualHardDiskSettingData), the export.
    rule = estate.sim.faults.add(F.DROP_CONNECTION, "Invoke", nth=nth, dispatch=True)
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired == 1
    assert job.status == "f", job.log()
    fatal = _one_fatal(job)
    assert f"{method} " in fatal and "HV01" in fatal, fatal
    assert "may or may not have been carried out" in fatal, fatal  # what to do
    assert estate.sim.log.count(method=method) == 1
    warnings = _texts(job, "M_WARNING")
    assert any("removed the recovery checkpoint" in w or "checkpoint was removed" in w for w in warnings), job.log()
    _assert_clean(estate.sim, "web01")
    _no_secret(estate.sim, job)


def test_vm_migrating_before_the_reference_point_is_followed_to_its_new_node(estate: Any) -> None:
    rule = estate.sim.faults.add(F.MIGRATE_VM, "ConvertToReferencePoint", vm="web01", to="HV02")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired == 1
    assert job.status == "T", job.log()
    web = estate.sim.world.vm("web01")
    assert web.node == "HV02"
    assert len(estate.sim.world.reference_points(web.id)) == 1
    _assert_clean(estate.sim, "web01")


def test_vm_migrating_during_the_export_fails_cleanly(estate: Any) -> None:
    rule = estate.sim.faults.add(F.MIGRATE_VM, "ExportSystemDefinition", vm="web01", to="HV02")
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert rule.fired == 1
    web = estate.sim.world.vm("web01")
    assert web.node == "HV02"
    # The export addressed the old owner: the job fails, and the checkpoint is removed on the new one.
    assert job.status == "f", job.log()
    fatal = _one_fatal(job)
    assert "ExportSystemDefinition on HV01" in fatal and "moved to another node" in fatal, fatal
    assert any("web01 is now on HV02" in i for i in _texts(job, "M_INFO")), job.log()
    assert estate.sim.world.reference_points(web.id) == []
    _assert_clean(estate.sim, "web01")


def test_dropped_smb_connection_mid_disk_resumes(big: BigEstate) -> None:
    source = big.sim.world.local("HV01", BIG_DISK)
    before = _sha(source)
    bg = big.start_backup(host="HVCLUSTER01", vm="big01")
    _mid_disk(big, bg)
    assert big.sim.samba is not None
    dropped = sum(server.drop_connections() for server in big.sim.samba.servers.values())
    job = bg.wait(120)
    assert dropped >= 1
    assert job.status == "T", job.log()
    assert "reconnect" in job.log().lower(), job.log()
    digests = dict(line.split("  ", 1)[::-1] for line in _trailer(big, job).splitlines())
    assert digests["disks/0-big01.vhdx"] == before
    _assert_clean(big.sim, "big01")
    assert len(big.sim.world.reference_points(big.sim.world.vm("big01").id)) == 1


def _trailer(big: BigEstate, job: JobResult) -> str:
    name = next(n for n in big.fd.list_files(job.jobid) if n.endswith("/SHA256SUMS"))
    rec = next(r for r in big.fd.store.files(job.jobid) if r.fname == name)
    item = big.fd.store.read_item(rec)
    return b"".join(chunk for _addr, chunk in big.fd.store.read_data(job.jobid, item.data)).decode()


def test_cancel_mid_disk_removes_the_checkpoint_and_the_staging_folder(big: BigEstate) -> None:
    bg = big.start_backup(host="HVCLUSTER01", vm="big01")
    _mid_disk(big, bg)
    assert _staging_leftovers(big.sim.world) != []  # the export is there until the cleanup
    assert big.fd.cancel(bg.jobid)
    job = bg.wait(120)
    assert job.status == "A", job.log()
    assert _texts(job, "M_FATAL") == [], job.log()
    assert any("canceled" in i for i in _texts(job, "M_INFO")), job.log()
    warnings = _texts(job, "M_WARNING")
    # the agent cleans up itself after SIGTERM and says so: no fresh agent is needed
    assert any("big01: the backup did not complete; its checkpoint was removed" in w for w in warnings), job.log()
    assert not any("starting a fresh agent" in w for w in warnings), job.log()
    _assert_clean(big.sim, "big01")
    assert big.sim.world.reference_points(big.sim.world.vm("big01").id) == []
    assert not any(n.endswith("/SHA256SUMS") for n in big.fd.list_files(job.jobid))


def test_agent_killed_mid_disk_is_cleaned_up_by_a_fresh_agent(big: BigEstate) -> None:
    bg = big.start_backup(host="HVCLUSTER01", vm="big01")
    _mid_disk(big, bg)
    pids = _agents()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    job = bg.wait(120)
    assert job.status == "f", job.log()
    fatal = _one_fatal(job)
    assert f"pid {pids[0]}" in fatal and "SIGKILL" in fatal, fatal
    warnings = _texts(job, "M_WARNING")
    assert any("was killed by SIGKILL without undoing it; starting a fresh agent" in w for w in warnings), job.log()
    assert any("removed the recovery checkpoint 'bareos-hyperv job" in w for w in warnings), job.log()
    assert any("removed the staging folder" in w for w in warnings), job.log()
    assert any("cleanup done" in i for i in _texts(job, "M_INFO")), job.log()
    _assert_clean(big.sim, "big01")
    assert big.sim.world.reference_points(big.sim.world.vm("big01").id) == []
    _no_secret(big.sim, job)


def test_agent_killed_while_the_vm_migrated_is_cleaned_up_on_the_new_owner(big: BigEstate) -> None:
    bg = big.start_backup(host="HVCLUSTER01", vm="big01")
    _mid_disk(big, bg)
    big.sim.world.migrate("big01", "HV02")
    os.kill(_agents()[0], signal.SIGKILL)
    job = bg.wait(120)
    assert job.status == "f", job.log()
    assert any("removed the recovery checkpoint" in w and "on HV02" in w for w in _texts(job, "M_WARNING")), \
        job.log()
    _assert_clean(big.sim, "big01")


# ---------------------------------------------------------------------------------------- safety net and VM order


def test_stale_checkpoint_of_an_earlier_job_is_removed_with_a_warning(estate: Any) -> None:
    world = estate.sim.world
    web = world.vm("web01")
    with world.lock:
        ours = world.take_snapshot(web, VST_RECOVERY, 2)
        ours.config.vssd["ElementName"] = "bareos-hyperv job 4242"
        theirs = world.take_snapshot(web, VST_RECOVERY, 2)
        theirs.config.vssd["ElementName"] = "other-backup-product"
    job = estate.backup(host="HVCLUSTER01", vm="web01")
    assert job.status == "T", job.log()
    assert any("removed the recovery checkpoint 'bareos-hyperv job 4242'" in w
               for w in _texts(job, "M_WARNING")), job.log()
    assert [s.id for s in world.snapshots(web.id)] == [theirs.id]  # another product's checkpoint stays
    assert _staging_leftovers(world) == []


def test_several_vms_one_after_the_other_and_a_failing_one_is_cleaned_up(estate: Any) -> None:
    # web01's export is the first, db01's the second: db01 fails after its checkpoint was taken.
    estate.sim.faults.add(F.JOB_FAIL, "ExportSystemDefinition", nth=2, error_code=32768,
                          error_description="Export failed: disk full.")
    estate.sim.log.clear()
    job = estate.backup(host="HVCLUSTER01", vm="web01,db01,file01")
    assert job.status == "f", job.log()
    assert "Export failed: disk full." in _one_fatal(job)
    world = estate.sim.world
    names = estate.fd.list_files(job.jobid)
    # web01 complete (digests, then its final manifest as a restore object); nothing after db01 failed
    web = "@hyperv/HVCLUSTER01/web01/"
    assert names[-4:] == [web + "SHA256SUMS", web + "manifest.object.xml", web + "base-0.object.json",
                          web + "base-1.object.json"]
    assert not any("/db01/" in n or "/file01/" in n for n in names)
    assert len(world.reference_points(world.vm("web01").id)) == 1
    assert world.reference_points(world.vm("db01").id) == []
    _assert_clean(estate.sim, "web01", "db01", "file01")
    # one VM at a time: web01's checkpoint became a reference point before db01's was taken
    methods = [r.method for r in estate.sim.log.records() if r.method in (
        "CreateSnapshot", "ConvertToReferencePoint", "DestroySnapshot")]
    assert methods == ["CreateSnapshot", "ConvertToReferencePoint", "CreateSnapshot", "DestroySnapshot"], methods


def test_agent_timeout_bounds_a_hanging_hyper_v_job(estate: Any) -> None:
    hang = estate.sim.faults.add(F.JOB_HANG, "ExportSystemDefinition")
    started = time.monotonic()
    try:
        job = estate.backup(host="HVCLUSTER01", vm="web01", timeout="3")
    finally:
        estate.sim.faults.remove(hang)
    assert time.monotonic() - started < 60
    assert job.status == "f", job.log()
    fatal = _one_fatal(job)
    assert "ExportSystemDefinition on HV01 did not finish within 3s" in fatal and "raise the timeout" in fatal, fatal
    _assert_clean(estate.sim, "web01")


