"""The README's FileSet, as written in bareos-dir.conf, backs up a clustered VM end to end.

The FileSet text is the README's own ("Writing option values"); only what differs in the simulated
estate is replaced: the cluster name, the VM, the credentials file and the addresses and ports of
the nodes (still written ``NODE=address#port``).  fdsim reads it with the director's lexer
(lib/lex.cc), so a spelling that needs escaping in a director file would fail here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from fdsim.pyfiles import bareosfd as bfd

from .conftest import PLUGIN_DIR, REPO

pytestmark = pytest.mark.usefixtures("no_agent_left")

README = REPO / "README.md"


def _readme_fileset() -> str:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    (block,) = [b for b in blocks if "FileSet" in b and "host_map" in b]
    return block


def _hash_map(endpoints: Dict[str, Tuple[str, int]]) -> str:
    return ",".join(f"{name}={address}#{port}" for name, (address, port) in sorted(endpoints.items()))


def _for_estate(text: str, estate: Any, credentials: Path) -> str:
    subs = {
        r"host=hv-cluster01": "host=HVCLUSTER01",
        r"vm=web01,db01": "vm=web01",
        r"credentials_file=/etc/bareos/hyperv\.cred": f"credentials_file={credentials}",
        r":host_map=[^\"]*": f":host_map={_hash_map(estate.sim.host_map())}",
        r":smb_host_map=[^\"]*": f":smb_host_map={_hash_map(estate.sim.smb_map())}",
    }
    for pattern, value in subs.items():
        text, n = re.subn(pattern, value, text)
        assert n == 1, pattern
    return text.replace('":staging_path', '":timeout=120"\n             ":staging_path')


def test_the_readme_fileset_backs_up_a_clustered_vm(estate: Any, tmp_path: Path) -> None:
    conf = _for_estate(_readme_fileset(), estate, estate.credentials_file)
    assert "\\" not in conf and "#" in conf
    job = estate.fd.backup_fileset(conf, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])
    assert job.status == "T", job.log()
    assert job.texts(bfd.M_FATAL) == [] and job.texts(bfd.M_ERROR) == []
    names = estate.fd.list_files(job.jobid)
    assert names[0] == "@hyperv/HVCLUSTER01/web01/manifest.xml"
    # staging_path=C$/ClusterStorage/Volume1/bareos-staging reached Hyper-V as C:\ClusterStorage\...
    staging = estate.sim.world.local("HV01", "C:\\ClusterStorage\\Volume1\\bareos-staging")
    assert staging.is_dir()
    assert estate.sim.world.snapshots(estate.sim.world.vm("web01").id) == []
