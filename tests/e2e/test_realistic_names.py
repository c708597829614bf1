r"""VMs named and placed as real estates have them, selected by their names, backed up and restored byte for byte.

The estate (:func:`hvsim.world.scenario.realistic_world`) has names with blanks, brackets, a comma,
an apostrophe, ``*``, Latin and CJK non-ASCII, configuration in Hyper-V's shared default folder and
in a folder path longer than MAX_PATH, a VM with twelve disks and switches with blanks in their
names.  The FileSet is written as an administrator writes it in ``bareos-dir.conf`` and read with the
director's lexer (fdsim.dirconf): a comma inside a name is ``\\,`` there, which reaches the plugin as
``\,``.  Issue #9 point 10.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Dict, Iterator

import pytest

from bareos_hyperv.manifest.document import from_xml
from bareos_hyperv.manifest.layout import escape_component
from fdsim.fd import FdSim, JobResult
from hvsim.simulation import Simulation
from hvsim.world.scenario import REALISTIC_HOST, realistic_world
from hvsim.world.state import SUB_VHD
from tests.e2e.conftest import PLUGIN_DIR, REPO, Estate

pytestmark = pytest.mark.usefixtures("no_agent_left")

#: Every VM but db1, each by its exact name: db[1] must not select db1, nor 'nightly build*' anything else.
CHOSEN = ["Web Server (Production) [EU-West]", "Müller's Büro-PC \u2013 Ärger", "Finance, Paris", "db[1]",
          "nightly build*", "経理サーバー", "Reporting Server for the Consolidated Statements", "Document Archive",
          "Sales DB (SMB)"]  # the last one lives on \\FS01\VMStore (Hyper-V over SMB)


@dataclass
class RealEstate(Estate):
    """The realistic estate, with FileSets written as in bareos-dir.conf."""

    def fileset_backup(self, vm: str, **options: str) -> JobResult:
        """A backup of a FileSet whose Plugin line is written the way bareos-dir.conf needs it."""
        plugin = f"python3:module_name=bareos-fd-hyperv:{self.options(host=REALISTIC_HOST, **options)}"
        # Inside the quotes every backslash must be doubled to reach the fd; vm= is written as given.
        conf = ('FileSet {\n  Name = "real-names"\n  Include {\n    Plugin = "'
                + plugin.replace("\\", "\\\\") + f':vm={vm}"\n  }}\n}}\n')
        return self.fd.backup_fileset(conf, plugin_dir=PLUGIN_DIR, extra_sys_path=[REPO])


@pytest.fixture
def real(tmp_path: Path) -> Iterator[RealEstate]:
    world = realistic_world(tmp_path / "sim" / "estate")
    with Simulation(tmp_path / "sim", world=world, samba=True) as sim:
        creds = sim.write_credentials_file(tmp_path / "hyperv.cred")
        yield RealEstate(sim, FdSim(tmp_path / "store"), tmp_path, creds)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fatal(job: JobResult) -> str:
    fatals = [m.text for m in job.messages if m.type_name == "M_FATAL" and m.source == "plugin"]
    assert len(fatals) == 1, job.log()
    return fatals[0]


def test_every_vm_by_its_exact_name_backed_up_and_restored_byte_identical(real: RealEstate, tmp_path: Path) -> None:
    world = real.sim.world
    sources: Dict[str, Dict[str, str]] = {}  # vm name -> disk host path -> sha256
    for name in CHOSEN:
        vm = world.vm(name)
        paths = [str(r) for s in vm.config.settings if s.subtype == SUB_VHD for r in s.host_resource]
        sources[name] = {path: _sha(world.local(vm.node, path)) for path in paths}
    assert len(sources["Document Archive"]) == 12
    assert any(len(p) > 260 for p in sources["Reporting Server for the Consolidated Statements"])

    job = real.fileset_backup(",".join(n.replace(",", "\\\\,") for n in CHOSEN))
    assert job.status == "T", job.log()
    names = real.fd.list_files(job.jobid)
    dirs = {n.split("/")[2] for n in names}
    assert dirs == {escape_component(n) for n in CHOSEN}, dirs  # db1 was not chosen by db[1]
    for name in [*CHOSEN, "db1"]:
        vm = world.vm(name)
        assert world.snapshots(vm.id) == [], name
        assert len(world.reference_points(vm.id)) == (0 if name == "db1" else 1), name

    restored = tmp_path / "restored"
    back = real.restore_to(restored)
    assert back.status == "T", back.log()
    for name, disks in sources.items():
        tree = restored / "@hyperv" / REALISTIC_HOST / escape_component(name)
        manifest = from_xml((tree / "manifest.xml").read_bytes(), source=f"{name}/manifest.xml")
        assert manifest.vm.ref.name == name
        files = {f.info.path: f for d in manifest.disks for f in d.chain}
        assert set(files) == set(disks), name
        sums = dict(reversed(line.split("  ", 1)) for line in (tree / "SHA256SUMS").read_text("utf-8").splitlines())
        for path, digest in disks.items():
            relative = f"disks/{files[path].index}-{escape_component(PureWindowsPath(path).name)}"
            assert _sha(tree / relative) == sums[relative] == digest, (name, relative)
        switches = {a.switch_name for a in manifest.vm.adapters}
        assert switches <= {s.name for s in manifest.host.switches}, switches
    adapters = {a.switch_name for a in from_xml(
        (restored / "@hyperv" / REALISTIC_HOST / escape_component(CHOSEN[0]) / "manifest.xml").read_bytes(),
        source="manifest.xml").vm.adapters}
    assert adapters == {"External Switch (Intel(R) Ethernet Connection I219-LM)", "Backup Network \u2013 10 GbE"}


def test_names_that_read_as_patterns_or_hold_a_comma_are_explained(real: RealEstate) -> None:
    # A single backslash in bareos-dir.conf is dropped by the director: the comma splits the name.
    job = real.fileset_backup("Finance\\, Paris")
    fatal = _fatal(job)
    guid = real.sim.world.vm("Finance, Paris").id.upper()
    assert "no VM matches 'Finance'" in fatal and "'Finance' and 'Paris' together" in fatal, fatal
    assert guid in fatal and "\\\\," in fatal, fatal
    # A pattern that matches nothing: the message says which characters made it a pattern, and the GUID.
    job = real.fileset_backup("db[2]")
    fatal = _fatal(job)
    assert "no VM matches 'db[2]'" in fatal and "[...]" in fatal and "GUID" in fatal, fatal
    # exclude_vm= follows the same rule: db* without the VM named db[1] is db1 alone.
    job = real.fileset_backup("db*:exclude_vm=db[1]")
    assert job.status == "T", job.log()
    assert {n.split("/")[2] for n in real.fd.list_files(job.jobid)} == {"db1"}
