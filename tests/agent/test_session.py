"""Session helpers: bounded outbox, redaction, log level mapping, peak memory."""

from __future__ import annotations

import logging

from bareos_hyperv.agent.session import MAX_OUTBOX, Outbox, OutboxHandler, Redactor, peak_rss_kib
from bareos_hyperv.protocol.messages import LogLevel, LogRecord


def test_outbox_is_bounded_and_says_how_much_it_dropped() -> None:
    box = Outbox(Redactor())
    for i in range(MAX_OUTBOX + 7):
        box.log(LogLevel.INFO, f"line {i}")
    items = box.take()
    assert len(items) == MAX_OUTBOX + 1
    last = items[-1]
    assert isinstance(last, LogRecord) and last.level is LogLevel.WARNING
    assert last.text.startswith("7 agent log records were dropped")
    assert box.take() == []


def test_redactor_hides_every_known_secret() -> None:
    redact = Redactor()
    redact.add("hunter22")
    redact.add("abc")  # too short to recognise safely: left alone
    box = Outbox(redact)
    box.log(LogLevel.ERROR, "login with hunter22 failed; abc")
    assert box.take() == [LogRecord(level=LogLevel.ERROR, text="login with *** failed; abc")]


def test_python_log_levels_map_to_protocol_levels() -> None:
    box = Outbox(Redactor())
    logger = logging.getLogger("test.session.mapping")
    handler = OutboxHandler(box)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.debug("d")
        logger.info("i %s", "x")
        logger.warning("w")
        logger.error("e")
        logger.critical("c")
    finally:
        logger.removeHandler(handler)
    assert [(r.level, r.text) for r in box.take()] == [  # type: ignore[attr-defined]
        (LogLevel.DEBUG, "d"), (LogLevel.INFO, "i x"), (LogLevel.WARNING, "w"), (LogLevel.ERROR, "e"),
        (LogLevel.ERROR, "c")]


def test_peak_memory_is_read_from_proc() -> None:
    before = peak_rss_kib()
    blob = bytearray(64 * 1024 * 1024)
    blob[::4096] = b"x" * len(blob[::4096])  # touch every page
    assert peak_rss_kib() >= before
    assert peak_rss_kib() > 64 * 1024
    del blob
