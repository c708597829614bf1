"""Real Samba for the storage tests: one smbd per simulated node, serving its C drive as ``C$``.

The nodes' C drives come from ``hvsim.fs.ClusterFileSystem``, so ``C:\\ClusterStorage`` is the CSV
symlink Samba must follow.  Session-scoped: starting smbd takes ~0.1 s, but the tree is shared.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from bareos_hyperv.storage.smb import SmbOptions, SmbStorage
from hvsim.fs import ClusterFileSystem
from hvsim.samba import SMBD, SambaCluster


def _need_samba() -> None:
    if not (shutil.which("smbpasswd") and os.access(SMBD, os.X_OK)):
        pytest.skip("Samba (smbd, smbpasswd) is not installed: apt-get install samba")


@pytest.fixture(scope="session")
def cluster_fs(tmp_path_factory: pytest.TempPathFactory) -> ClusterFileSystem:
    fs = ClusterFileSystem(tmp_path_factory.mktemp("sim"))
    for node in ("HV01", "HV02"):
        fs.node(node)
    fs.csv_volume(1)
    return fs


@pytest.fixture(scope="session")
def samba_cluster(cluster_fs: ClusterFileSystem) -> Iterator[SambaCluster]:
    _need_samba()
    vms = cluster_fs.share_dir("HV01", "D") / "VMs"
    vms.mkdir(parents=True, exist_ok=True)
    cluster = SambaCluster(
        {n: cluster_fs.share_dir(n) for n in ("HV01", "HV02")},
        extra_shares={"HV01": {"vms": vms}, "FILESERVER": {"csv": cluster_fs.csv_root}},
    )
    with cluster:
        yield cluster


SmbFactory = Callable[..., SmbStorage]


@pytest.fixture
def smb_factory(samba_cluster: SambaCluster) -> Iterator[SmbFactory]:
    """Make SmbStorage objects for the cluster with given SmbOptions fields (closed after the test)."""
    made: List[SmbStorage] = []
    server = samba_cluster.servers["HV01"]

    def make(**options: Any) -> SmbStorage:
        options.setdefault("retry_delay", 0.01)
        st = SmbStorage(
            server.user, server.password, endpoints=samba_cluster.endpoints(), options=SmbOptions(**options)
        )
        made.append(st)
        return st

    yield make
    for st in made:
        st.close()


@pytest.fixture
def smb(smb_factory: SmbFactory) -> SmbStorage:
    return smb_factory()


@pytest.fixture
def node_dir(cluster_fs: ClusterFileSystem, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory under HV01's C drive for one test (removed afterwards)."""
    safe = "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    d = cluster_fs.share_dir("HV01") / f"t-{safe}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)
