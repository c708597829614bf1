"""data=local: the cluster shared volumes are mounted on the fd host; disks are read from the mount."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("no_agent_left")


def test_full_backup_reads_disks_from_a_local_mount(estate: Any, tmp_path: Path) -> None:
    world = estate.sim.world
    csv_root = world.fs.csv_root  # what a CSV mount on the fd host would show
    source = csv_root / "Volume1" / "web01" / "Virtual Hard Disks" / "web01-system.vhdx"
    frozen = hashlib.sha256(source.read_bytes()).hexdigest()  # the merge after the backup rewrites headers
    # No SMB at all: stop Samba, so a backup that still used it would fail.
    estate.sim.samba.stop()
    estate.sim.samba = None
    job = estate.backup(host="HVCLUSTER01", vm="web01", data="local",
                        path_map=f"C:\\ClusterStorage={csv_root}")
    assert job.status == "T", job.log()
    back = estate.restore_to(tmp_path / "r")
    assert back.status == "T", back.log()
    tree = tmp_path / "r" / "@hyperv" / "HVCLUSTER01" / "web01"
    digests = dict(reversed(line.split("  ", 1)) for line in (tree / "SHA256SUMS").read_text().splitlines())
    assert digests["disks/0-web01-system.vhdx"] == frozen
    assert hashlib.sha256((tree / "disks" / "0-web01-system.vhdx").read_bytes()).hexdigest() == frozen
    assert world.snapshots(world.vm("web01").id) == []


def test_data_local_without_a_matching_path_map_names_the_path(estate: Any) -> None:
    job = estate.backup(host="HVCLUSTER01", vm="web01", data="local", path_map="D:\\Elsewhere=/mnt/x")
    assert job.status == "f"
    fatal = " ".join(m.text for m in job.messages if m.type_name == "M_FATAL")
    assert "path map" in fatal and "ClusterStorage" in fatal, job.log()
    assert estate.sim.world.snapshots(estate.sim.world.vm("web01").id) == []
