"""Fixtures of the WS-Man client tests: the replay server module, fixture paths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

FIXTURES = (Path(__file__).resolve().parents[3] / "tests/fixtures/shared")


def load_replay_server() -> ModuleType:
    """Import tests/unit/wsman/replay_server.py by path (tests run with --import-mode=importlib)."""
    name = "bareos_hyperv_tests_replay_server"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).with_name("replay_server.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def rs() -> ModuleType:
    """The replay server helper module."""
    return load_replay_server()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
