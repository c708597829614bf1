"""``bareos-hyperv`` as an administrator runs it, against the simulated estate (WinRM over NTLM, real Samba).

Each command goes through ``main`` with the flags a user types; the simulator is reached the way
``demo --estate-only`` documents it (``--host-map``, ``--smb-host-map``, a credentials file).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from bareos_hyperv import __version__
from bareos_hyperv.cli.__main__ import build_parser, main
from bareos_hyperv.cli.common import cli_advice
from bareos_hyperv.cli.render import passthrough_disk
from fdsim.fd import FdSim
from hvsim.behaviour import WinrmBehaviour
from hvsim.simulation import Simulation

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    with Simulation(tmp_path_factory.mktemp("cli") / "sim", samba=True) as sim:
        yield sim


@pytest.fixture
def sim(estate: Simulation) -> Iterator[Simulation]:
    """The shared estate; node behaviours are reset after each test."""
    try:
        yield estate
    finally:
        estate.faults.clear()
        for node in estate.world.nodes.values():
            node.winrm = WinrmBehaviour()


@pytest.fixture
def creds(estate: Simulation, tmp_path: Path) -> Path:
    return estate.write_credentials_file(tmp_path / "hyperv.cred")


def reach(sim: Simulation, creds: Path, *, smb: bool = True) -> List[str]:
    args = ["--credentials-file", str(creds), "--host-map", sim.host_map_option()]
    if smb:
        args += ["--smb-host-map", ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items()))]
    return args


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------- help and version

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bareos-hyperv {__version__}"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_help_has_no_markup_and_every_option_says_what_it_does() -> None:
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, parser.prog
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("list", "check", "plan", "install-plugin", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert out.startswith(f"usage: bareos-hyperv {command}")


# ---------------------------------------------------------------------------- advice in CLI terms

def test_missing_credentials_are_explained_with_flags(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAREOS_HYPERV_USERNAME", raising=False)
    monkeypatch.delenv("BAREOS_HYPERV_PASSWORD", raising=False)
    code, _, err = run(capsys, "list", "--host", "hv01")
    assert code == 2
    assert "--credentials-file" in err and "plugin option" not in err and "credentials_file=" not in err


def test_plugin_options_in_advice_become_flags() -> None:
    assert cli_advice("set restore_switch_map=External-LAN=<switch> to a switch of HV02") == \
        "set --switch-map External-LAN=<switch> to a switch of HV02"
    assert cli_advice("set restore_new_id=yes for a copy") == "set --new-id for a copy"
    assert cli_advice("check host_map= in the plugin options") == "check --host-map on the command line"
    assert cli_advice(None) is None


# ---------------------------------------------------------------------------- list

def test_list_shows_a_pass_through_disk_readably(sim: Simulation, creds: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--host", "HVSTANDALONE01", *reach(sim, creds, smb=False))
    assert code == 0
    assert "legacy01" in out and "Standalone host HVSTANDALONE01" in out
    line = next(x for x in out.splitlines() if "pass-through" in x)
    assert "host disk 2 on HVSTANDALONE01" in line
    assert "Msvm_DiskDrive" not in out and "CreationClassName" not in out


def test_passthrough_rendering_of_object_paths() -> None:
    path = ('\\\\HV01\\root\\virtualization\\v2:Msvm_DiskDrive.CreationClassName="Msvm_DiskDrive",'
            'DeviceID="Microsoft:5F3A\\\\3",SystemCreationClassName="Msvm_ComputerSystem",SystemName="HV01"')
    assert passthrough_disk(path) == "host disk 3 on HV01"
    assert passthrough_disk(None) == "(no host disk)"
    assert passthrough_disk("not a path") == "not a path"


def test_list_json_with_a_vm_pattern(sim: Simulation, creds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--host", "HVCLUSTER01", "--vm", "web*", "--vm", "db01", "--json",
                       *reach(sim, creds, smb=False))
    assert code == 0
    data = json.loads(out)
    assert data["scope"] == "HVCLUSTER01"
    assert [n["name"] for n in data["cluster"]["nodes"]] == ["HV01", "HV02"]
    assert [vm["name"] for vm in data["vms"]] == ["db01", "web01"]
    web = next(vm for vm in data["vms"] if vm["name"] == "web01")
    assert web["node"] == "HV01" and web["clustered"] is True
    assert all(d["path"].endswith(".vhdx") and d["backed_up"] for d in web["drives"] if d["kind"] == "vhd")


def test_list_with_a_pattern_matching_nothing_fails(sim: Simulation, creds: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "list", "--host", "HVCLUSTER01", "--vm", "nosuch*", *reach(sim, creds, smb=False))
    assert code == 1 and "no VM of HVCLUSTER01 matches nosuch*" in err


# ---------------------------------------------------------------------------- check

def _lines(out: str, status: str) -> List[str]:
    return [line for line in out.splitlines() if line.startswith(status)]


def test_check_of_a_healthy_cluster_is_all_ok(sim: Simulation, creds: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--host", "HVCLUSTER01", "--vm", "web01", *reach(sim, creds))
    assert code == 0, out
    assert not _lines(out, "WARN") and not _lines(out, "FAIL")
    probes = {line.split()[1] for line in _lines(out, "OK")}
    assert probes == {"winrm", "cluster", "space", "hyperv", "smb", "version", "disk", "staging", "switch"}
    assert out.rstrip().endswith("0 WARN, 0 FAIL")
    assert not [p for p in sim.world.fs.share_dir("HV01").rglob(".bareos-hyperv-check-*")], "probe file left"


def test_check_json(sim: Simulation, creds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--host", "HVCLUSTER01", "--vm", "db01", "--json", *reach(sim, creds))
    data = json.loads(out)
    assert code == data["status"] == 0
    assert data["summary"]["FAIL"] == 0 and data["summary"]["OK"] == len(data["results"])
    assert {r["probe"] for r in data["results"]} >= {"winrm", "disk", "staging"}


def test_check_fails_when_the_cluster_namespace_is_denied(sim: Simulation, creds: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    sim.world.node("HV01").winrm.denied_namespaces.add("root/MSCluster")
    code, out, _ = run(capsys, "check", "--host", "HV01", *reach(sim, creds))
    assert code == 2
    (fail,) = _lines(out, "FAIL")
    assert "cluster" in fail and "root/MSCluster" in fail
    assert "Grant-ClusterAccess" in out and "Administrators" in out


def test_check_fails_when_hyperv_is_denied_on_a_node(sim: Simulation, creds: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sim.world.node("HV02").winrm.denied_namespaces.add("root/virtualization/v2")
    code, out, _ = run(capsys, "check", "--host", "HVCLUSTER01", "--vm", "web01", *reach(sim, creds))
    assert code == 2
    fails = _lines(out, "FAIL")
    assert any("hyperv" in f and "HV02" in f and "refused the account" in f for f in fails), out
    assert "local Administrators group of HV02" in out


def test_check_fails_when_a_share_is_unreachable(sim: Simulation, creds: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    smb = {n: f"{a}:{p}" for n, (a, p) in sim.smb_map().items()}
    smb["HV02"] = "127.0.0.1:9"  # nothing listens there
    args = ["--credentials-file", str(creds), "--host-map", sim.host_map_option(),
            "--smb-host-map", ",".join(f"{n}={t}" for n, t in sorted(smb.items()))]
    code, out, _ = run(capsys, "check", "--host", "HVCLUSTER01", "--vm", "db01", *args)
    assert code == 2
    fails = _lines(out, "FAIL")
    assert any(f.split()[1] == "smb" and "HV02" in f for f in fails), out
    assert any(f.split()[1] == "disk" and "db01" in f for f in fails), out
    assert "TCP 445" in out
    assert any(line.split()[1] == "smb" and "HV01" in line for line in _lines(out, "OK"))


def test_check_fails_on_a_disk_a_checkpoint_cannot_capture(sim: Simulation, creds: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--host", "HVSTANDALONE01", "--vm", "legacy01", *reach(sim, creds))
    assert code == 2
    (fail,) = _lines(out, "FAIL")
    assert "pass-through disk (host disk 2 on HVSTANDALONE01) cannot be captured" in fail
    assert any(line.split()[1] == "disk" and ".vhd" in line for line in _lines(out, "OK"))


def test_check_names_an_unknown_vm(sim: Simulation, creds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--host", "HVSTANDALONE01", "--vm", "nosuch", *reach(sim, creds))
    assert code == 2 and "no VM of HVSTANDALONE01 matches 'nosuch'" in out


def test_check_of_an_unreachable_host_says_what_to_open(creds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--host", "HV09", "--credentials-file", str(creds),
                       "--host-map", "HV09=127.0.0.1:9", "--timeout", "5")
    assert code == 2
    assert "winrm quickconfig" in out and "TCP 5985" in out


# ---------------------------------------------------------------------------- plan

@pytest.mark.samba
def test_plan_from_a_restored_manifest(sim: Simulation, creds: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    smb = ",".join(f"{n}={a}:{p}" for n, (a, p) in sorted(sim.smb_map().items()))
    fd = FdSim(tmp_path / "store")
    plugin = ":".join(["python3:module_name=bareos-fd-hyperv", "host=HVCLUSTER01", "vm=db01",
                       f"credentials_file={creds}", "host_map=" + sim.host_map_option().replace(":", "\\:"),
                       "smb_host_map=" + smb.replace(":", "\\:"), "timeout=120"])
    job = fd.backup(plugin, plugin_dir=REPO / "packaging", extra_sys_path=[REPO])
    assert job.status == "T", job.log()
    back = fd.restore(None, where=str(tmp_path / "restored"), plugin_dir=REPO / "packaging", extra_sys_path=[REPO])
    assert back.status == "T", back.log()
    manifest = tmp_path / "restored" / "@hyperv" / "HVCLUSTER01" / "db01" / "manifest.xml"

    code, out, _ = run(capsys, "plan", "--manifest", str(manifest), "--host", "HVCLUSTER01", "--node", "HV01",
                       "--new-id", "--vm-name", "db01-copy", *reach(sim, creds))
    assert code == 0, out
    assert "db01-copy" in out and "Result: ready to restore" in out
    assert not [vm for vm in sim.world.vms.values() if vm.name == "db01-copy"], "plan changed nothing"

    hv01 = sim.world.node("HV01")
    lan = hv01.switch_by_name("External-LAN")
    assert lan is not None
    lan.name = "Production"
    try:
        code, out, _ = run(capsys, "plan", "--manifest", str(manifest), "--host", "HVCLUSTER01", "--node", "HV01",
                           "--new-id", *reach(sim, creds))
    finally:
        lan.name = "External-LAN"
    assert code == 1
    assert "Result: refused" in out and "--switch-map External-LAN=" in out and "restore_switch_map" not in out


def test_plan_refuses_contradicting_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "manifest.xml"
    manifest.write_text("<x/>")
    code, _, err = run(capsys, "plan", "--manifest", str(manifest), "--overwrite", "--new-id")
    assert code == 2 and "--overwrite" in err


# ---------------------------------------------------------------------------- install-plugin

def test_install_plugin_into_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "install-plugin", "--plugin-dir", str(tmp_path), "--package-path", "/opt/bh/site")
    assert code == 0 and out.startswith(f"installed: {tmp_path / 'bareos-fd-hyperv.py'}")
    assert "bareos-filedaemon-python3-plugin" in out and 'Plugin Names = "python3"' in out
    text = (tmp_path / "bareos-fd-hyperv.py").read_text(encoding="utf-8")
    assert "_sys.path.append('/opt/bh/site')" in text
    compile(text, "bareos-fd-hyperv.py", "exec")
    code, out, _ = run(capsys, "install-plugin", "--plugin-dir", str(tmp_path), "--no-path")
    assert code == 0 and out.startswith("replaced:")
    assert (tmp_path / "bareos-fd-hyperv.py").read_bytes() == (REPO / "packaging" / "bareos-fd-hyperv.py").read_bytes()


def test_install_plugin_print_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "install-plugin", "--print")
    assert code == 0 and "from BareosFdWrapper import *" in out and "_sys.path.append" in out
    code, _, err = run(capsys, "install-plugin")
    assert code == 2 and "--plugin-dir" in err
    code, _, err = run(capsys, "install-plugin", "--plugin-dir", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and "Plugin Directory" in err


# ---------------------------------------------------------------------------- demo --estate-only

@pytest.mark.samba
def test_demo_estate_only_prints_command_lines_that_work(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bareos_hyperv.cli", "demo", "--estate-only"], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: List[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.strip() == "READY":
                break
        assert lines and lines[-1] == "READY", "\n".join(lines)
        commands = [x.strip() for x in lines if x.strip().startswith("bareos-hyperv ")]
        assert any(" list " in c for c in commands) and any(" check " in c for c in commands)
        for command in commands[:1] + [c for c in commands if " check " in c]:
            argv = shlex.split(command)[1:]
            done = subprocess.run([sys.executable, "-m", "bareos_hyperv.cli", *argv], capture_output=True,
                                  text=True, timeout=120, check=False, cwd=str(tmp_path))
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
