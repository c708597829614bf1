"""Job messages inside a real fdsim job: severities of agent records, one trailing newline, debug lines."""

from __future__ import annotations

from pathlib import Path

from fdsim.fd import FdSim

from .conftest import REPO

PLUGIN = '''
import bareosfd
from BareosFdWrapper import *  # noqa
from BareosFdWrapper import BareosPlugin

from bareos_hyperv.fd.joblog import JobLog
from bareos_hyperv.protocol.messages import LogLevel, LogRecord, Progress


@BareosPlugin
class LogOnly:
    def __init__(self, plugindef):
        log = JobLog()
        for level in LogLevel:
            log.agent_log(LogRecord(level=level, text=level.value + " from the agent"))
        log.info("plain")
        log.warning("already terminated\\n")
        log.progress(Progress(name="@x", bytes=5))

    def parse_plugin_definition(self, plugindef):
        return bareosfd.bRC_OK

    def handle_plugin_event(self, event):
        return bareosfd.bRC_OK

    def start_backup_file(self, savepkt):
        return bareosfd.bRC_Stop
'''


def test_agent_records_get_bareos_severities_and_one_newline(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "joblog-probe.py").write_text(PLUGIN)
    result = FdSim(tmp_path / "store").backup("python3:module_name=joblog-probe", plugin_dir=plugins,
                                              extra_sys_path=[REPO])
    assert result.status == "T", result.log()
    mine = [(m.type_name, m.text) for m in result.messages if m.source == "plugin"]
    assert mine == [
        ("M_INFO", "agent: info from the agent\n"),
        ("M_WARNING", "agent: warning from the agent\n"),
        ("M_ERROR", "agent: error from the agent\n"),
        ("M_INFO", "plain\n"),
        ("M_WARNING", "already terminated\n"),
    ]
    assert (200, "agent: debug from the agent\n") in result.debug_messages
    assert (100, "agent: @x: 5 bytes so far\n") in result.debug_messages
