"""Backup domain types the manifest records (bareos_hyperv.model.backup)."""

from __future__ import annotations

import pytest

from bareos_hyperv.model.backup import BackupLevel


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("F", BackupLevel.FULL),
        ("i", BackupLevel.INCREMENTAL),
        (" D ", BackupLevel.DIFFERENTIAL),
        ("Full", BackupLevel.FULL),
        ("incremental", BackupLevel.INCREMENTAL),
    ],
)
def test_bareos_levels_map_to_backup_levels(given: str, level: BackupLevel) -> None:
    assert BackupLevel.from_bareos(given) is level


@pytest.mark.parametrize("given", ["V", "B", "", "Fullish", "C"])
def test_other_bareos_levels_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="is not Full, Incremental or Differential"):
        BackupLevel.from_bareos(given)
