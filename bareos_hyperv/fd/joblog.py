"""Job messages of the plugin: one place that talks to ``bareosfd.JobMessage``/``DebugMessage``.

Every job-log line goes through :meth:`JobLog.emit`, which adds the trailing newline Bareos
expects.  Agent log records are mapped to Bareos severities here: debug -> DebugMessage,
info -> M_INFO, warning -> M_WARNING, error -> M_ERROR; a job-ending failure is reported once by
the plugin as M_FATAL.
"""

from __future__ import annotations

import bareosfd

from bareos_hyperv.protocol.messages import LogLevel, LogRecord, Progress

__all__ = ["DEBUG_AGENT", "DEBUG_TRACE", "JobLog"]

# DebugMessage levels: plugin tracing, and the agent's own debug records.
DEBUG_TRACE = 100
DEBUG_AGENT = 200


class JobLog:
    """Writes job messages and debug lines for the plugin and the agent."""

    def emit(self, msg_type: int, text: str) -> None:
        """One job-log line of Bareos type ``msg_type`` (M_INFO, ...), newline added."""
        bareosfd.JobMessage(msg_type, text.rstrip("\n") + "\n")

    def info(self, text: str) -> None:
        """An operator message (M_INFO)."""
        self.emit(bareosfd.M_INFO, text)

    def warning(self, text: str) -> None:
        """A warning (M_WARNING): the job ends "OK -- with warnings"."""
        self.emit(bareosfd.M_WARNING, text)

    def error(self, text: str) -> None:
        """An error that does not end the job by itself (M_ERROR)."""
        self.emit(bareosfd.M_ERROR, text)

    def fatal(self, text: str) -> None:
        """The error that ends the job (M_FATAL)."""
        self.emit(bareosfd.M_FATAL, text)

    def debug(self, level: int, text: str) -> None:
        """A trace line for the fd's debug output (shown at debug level >= ``level``)."""
        bareosfd.DebugMessage(level, text.rstrip("\n") + "\n")

    def agent_log(self, record: LogRecord) -> None:
        """Relay one agent log record with its Bareos severity."""
        text = f"agent: {record.text}"
        if record.level is LogLevel.DEBUG:
            self.debug(DEBUG_AGENT, text)
        elif record.level is LogLevel.INFO:
            self.info(text)
        elif record.level is LogLevel.WARNING:
            self.warning(text)
        else:
            self.error(text)

    def progress(self, record: Progress) -> None:
        """Progress of a running transfer (debug output only: the job log shows the totals)."""
        self.debug(DEBUG_TRACE, f"agent: {record.name}: {record.bytes} bytes so far")
