from __future__ import annotations
from .helpers import JOB_TIMEOUT

def test_x() -> None:
    assert JOB_TIMEOUT > 0
