"""fdsim's BareosFdPluginBaseclass and BareosFdWrapper, run inside the emulated fd."""

from __future__ import annotations

import base64
from pathlib import Path

from fdsim.fd import FdSim
from fdsim.pyfiles import bareosfd as bfd

PLUGIN = r'''
import json
import bareosfd
from bareosfd import *
from BareosFdWrapper import *  # noqa
from BareosFdPluginBaseclass import BareosFdPluginBaseclass


@BareosPlugin
class P(BareosFdPluginBaseclass):
    def __init__(self, plugindef):
        super().__init__(plugindef, mandatory_options=["out"])

    def start_backup_job(self):
        with open(self.options["out"], "w") as fh:
            json.dump({"options": self.options, "short": self.shortName, "configdir": self.configdir,
                       "level": self.level, "jobId": self.jobId}, fh)
        return bRC_OK
'''


def _sim(tmp_path: Path) -> tuple[FdSim, Path]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bareos-fd-opts.py").write_text(PLUGIN)
    return FdSim(tmp_path / "store"), plugins


def test_options_files_encoding_and_precedence(tmp_path: Path) -> None:
    import json

    sim, plugins = _sim(tmp_path)
    (sim.config_dir / "defaults.ini").write_text("# comment\n[section]\na=from-defaults\nb=from-defaults\n"
                                                 "long=one\\\ntwo\n")
    (sim.config_dir / "overrides.ini").write_text("c=from-overrides\n")
    out = tmp_path / "out.json"
    enc = base64.b85encode(b"s3cr:t").decode()
    cmd = (f"python3:module_name=bareos-fd-opts:out={out}:defaults_file=defaults.ini:overrides_file=overrides.ini"
           f":b=from-string:c=from-string:pw#enc={enc}:empty=")
    r = sim.backup(cmd, plugin_dir=plugins)
    assert r.status == "T", r.log()
    seen = json.loads(out.read_text())
    assert seen["options"]["a"] == "from-defaults"
    assert seen["options"]["b"] == "from-string"
    assert seen["options"]["c"] == "from-overrides"
    assert seen["options"]["long"] == "onetwo"
    assert seen["options"]["pw"] == "s3cr:t"
    assert seen["short"] == "backup-fdsim" and seen["level"] == ord("F") and seen["jobId"] == r.jobid
    assert seen["configdir"] == str(sim.config_dir) + "/"
    assert "ignoring option 'empty' with no value!\n" in r.texts(bfd.M_WARNING)


def test_mandatory_option_and_unreadable_options_file(tmp_path: Path) -> None:
    sim, plugins = _sim(tmp_path)
    r = sim.backup("python3:module_name=bareos-fd-opts:x=1", plugin_dir=plugins)
    assert r.status == "f"
    assert "Mandatory option 'out' not defined.\n" in r.texts(bfd.M_FATAL)
    # the base class returns False (== bRC_OK) after the M_FATAL: the message alone fails the job
    r = sim.backup(f"python3:module_name=bareos-fd-opts:out={tmp_path / 'o'}:defaults_file=missing.ini",
                   plugin_dir=plugins)
    assert r.status == "f"
    assert any("While loading options file 'missing.ini'" in t for t in r.texts(bfd.M_FATAL))
