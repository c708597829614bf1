"""Per-job sub-interpreters: the failure Bareos issue 2216 shows, reproduced in the emulation.

Each scenario runs in a fresh Python process, because PyO3 and lxml remember the first
interpreter of the *process*; the pytest process may already have imported them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fdsim.interp import SubInterpreter

PLUGIN_TEMPLATE = """
import bareosfd
from bareosfd import *
from BareosFdWrapper import *  # noqa
from BareosFdPluginBaseclass import BareosFdPluginBaseclass
{imports}


@BareosPlugin
class P(BareosFdPluginBaseclass):
    def start_backup_file(self, savepkt):
        if getattr(self, "done", False):
            return bRC_Stop
        self.done = True
        savepkt.fname = "/@p/one"
        savepkt.type = FT_REG
        savepkt.no_read = True
        savepkt.statp = StatPacket(size=0)
        return bRC_OK
"""

DRIVER = """
import json, sys
from fdsim.fd import FdSim
sim = FdSim(sys.argv[1])
out = []
for module in sys.argv[3:]:
    r = sim.backup("python3:module_name=" + module + ":a=b", plugin_dir=sys.argv[2])
    out.append({"module": module, "status": r.status, "fatal": r.texts(3), "files": [f.fname for f in r.files]})
print(json.dumps(out))
"""


def _run(tmp_path: Path, plugins: Dict[str, str], modules: List[str]) -> List[Dict[str, Any]]:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    for name, imports in plugins.items():
        (plugin_dir / f"{name}.py").write_text(PLUGIN_TEMPLATE.format(imports=imports))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "store"), str(plugin_dir), *modules],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_pyo3_and_lxml_plugins_fail_on_the_second_job_like_bareos(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    pytest.importorskip("lxml")
    out = _run(tmp_path, {"bareos-fd-crypto": "import cryptography.hazmat.bindings._rust",
                          "bareos-fd-lxml": "import lxml.etree"},
               ["bareos-fd-crypto", "bareos-fd-crypto", "bareos-fd-lxml", "bareos-fd-lxml"])
    assert [o["status"] for o in out] == ["T", "f", "T", "f"]
    assert out[0]["files"] == ["/@p/one"] and out[1]["files"] == []
    crypto_err = "\n".join(out[1]["fatal"])
    assert crypto_err.startswith("bareosfd: Traceback")
    assert "ImportError: PyO3 modules do not yet support subinterpreters" in crypto_err
    assert "ImportError: Interpreter change detected" in "\n".join(out[3]["fatal"])


def test_stdlib_plugin_passes_three_jobs_in_one_process(tmp_path: Path) -> None:
    out = _run(tmp_path, {"bareos-fd-good": "import json, hashlib, subprocess, threading"},
               ["bareos-fd-good"] * 3)
    assert [o["status"] for o in out] == ["T", "T", "T"]
    assert all(o["files"] == ["/@p/one"] for o in out)


def test_subinterpreter_is_fresh_and_isolated_from_the_host() -> None:
    interp = SubInterpreter()
    seen: List[Any] = []
    try:
        res = interp.request(("call", "x", ()), lambda name, args: seen.append(name))
        assert res == {"st": "nofunc"}  # no module loaded yet in this interpreter
    finally:
        assert interp.close(lambda name, args: None) == []
    assert seen == []
    with pytest.raises(Exception, match="stopped"):
        interp.request(("call", "x", ()), lambda name, args: None)


def test_plugin_sees_a_separate_sys_modules(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        import fdsim.pyfiles.bareosfd as host_side
        from fdsim.interp import SubInterpreter
        i = SubInterpreter()
        i.close(lambda n, a: None)
        print("bareosfd" in sys.modules, "_fdsim_guest" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_clear_error_without_a_subinterpreter_api(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["_xxsubinterpreters"] = None
        sys.modules["_interpreters"] = None
        from fdsim.fd import FdSim
        from fdsim.interp import SubInterpreterUnavailable
        sim = FdSim(sys.argv[1])
        try:
            sim.backup("python3:module_name=m:a=b")
        except SubInterpreterUnavailable as exc:
            print("refused:", exc)
        print("status", sim.list_jobs()[0].status)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "refused: fdsim needs CPython's _xxsubinterpreters" in proc.stdout
    assert "status f" in proc.stdout
