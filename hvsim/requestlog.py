"""Thread-safe log of the WS-Management requests one simulated node answered.

Tests and benchmarks count round trips with it ("how many Invokes of
``GetSummaryInformation`` did a backup need?"), and read what failed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import List

OUTCOME_OK = "ok"


@dataclass(frozen=True)
class RequestRecord:
    """One answered request.

    ``outcome`` is ``"ok"`` or the fault subcode (``"w:InvalidSelectors"``).
    ``items`` counts instances returned (Get: 1, Enumerate/Pull: items in the
    response, others 0).  ``namespace``/``class_name``/``method`` are what the
    request addressed, as far as it could be parsed.
    """

    operation: str
    namespace: str | None = None
    class_name: str | None = None
    method: str | None = None
    user: str | None = None
    duration: float = 0.0
    outcome: str = OUTCOME_OK
    items: int = 0
    filter_text: str | None = None
    timestamp: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        """True when the request was answered without a fault."""
        return self.outcome == OUTCOME_OK


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


class RequestLog:
    """Append-only, thread-safe list of :class:`RequestRecord`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: List[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        """Append one record (called by the dispatcher once per request)."""
        with self._lock:
            self._records.append(record)

    def records(self) -> List[RequestRecord]:
        """A snapshot copy of every record so far, oldest first."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        """Forget every record (for example between phases of a test)."""
        with self._lock:
            self._records.clear()

    def count(
        self,
        operation: str | None = None,
        method: str | None = None,
        cls: str | None = None,
        *,
        outcome: str | None = None,
    ) -> int:
        """Number of records matching every given filter (case-insensitive).

        ``outcome`` may be ``"ok"``, ``"fault"`` (any fault) or a subcode.
        """
        n = 0
        for r in self.records():
            if operation is not None and not _same(r.operation, operation):
                continue
            if method is not None and not _same(r.method, method):
                continue
            if cls is not None and not _same(r.class_name, cls):
                continue
            if outcome is not None:
                if outcome == "fault":
                    if r.ok:
                        continue
                elif not _same(r.outcome, outcome):
                    continue
            n += 1
        return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
