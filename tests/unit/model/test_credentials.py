"""Credentials loading and redaction (bareos_hyperv.model.credentials)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.model.credentials import Credentials

SECRET = "Tr0ub4dor&3 x"


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "hyperv.cred"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return str(path)


def test_file_with_domain_and_quotes(tmp_path: Path) -> None:
    path = _write(tmp_path, f'# backup account\nusername = CORP\\hvbackup\npassword="{SECRET} "\n\n')
    creds = Credentials.from_file(path)
    assert creds.username == "hvbackup" and creds.domain == "CORP" and creds.principal == "CORP\\hvbackup"
    assert creds.password == SECRET + " "
    assert SECRET not in repr(creds) and SECRET not in str(creds) and "***" in repr(creds)


def test_explicit_domain_key_and_upn(tmp_path: Path) -> None:
    creds = Credentials.from_file(_write(tmp_path, f"username=hvbackup\npassword={SECRET}\ndomain=CORP\n"))
    assert creds.principal == "CORP\\hvbackup"
    upn = Credentials("hvbackup@corp.example", "x")
    assert upn.domain is None and upn.principal == "hvbackup@corp.example"


def test_group_readable_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, f"username=u\npassword={SECRET}\n", mode=0o640)
    with pytest.raises(ConfigurationError, match="chmod 600") as info:
        Credentials.from_file(path)
    assert "0640" in str(info.value) and SECRET not in str(info.value)


def test_bad_lines_are_reported_without_echo(tmp_path: Path) -> None:
    path = _write(tmp_path, f"username=u\n{SECRET}\n")
    with pytest.raises(ConfigurationError, match="line 2") as info:
        Credentials.from_file(path)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError, match="no password"):
        Credentials.from_file(_write(tmp_path, "username=u\n"))
    with pytest.raises(ConfigurationError, match="cannot open"):
        Credentials.from_file(str(tmp_path / "missing"))


def test_environment() -> None:
    env = {"BAREOS_HYPERV_USERNAME": "hv", "BAREOS_HYPERV_PASSWORD": SECRET, "BAREOS_HYPERV_DOMAIN": "LAB"}
    creds = Credentials.load(None, env)
    assert creds.principal == "LAB\\hv" and creds.password == SECRET
    with pytest.raises(ConfigurationError, match="BAREOS_HYPERV_PASSWORD"):
        Credentials.from_env({"BAREOS_HYPERV_USERNAME": "hv"})
    assert creds == Credentials("LAB\\hv", SECRET) and creds != Credentials("LAB\\hv", "other")
