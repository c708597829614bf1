"""Method return-value names (bareos_hyperv.hyperv.returncodes)."""

from __future__ import annotations

import pytest

from bareos_hyperv.hyperv.returncodes import ReturnCode, describe, label


@pytest.mark.parametrize(
    ("method", "code", "name"),
    [
        ("CreateSnapshot", 0, "Completed with No Error"),
        ("CreateSnapshot", 1, "Not Supported"),
        ("CreateSnapshot", 2, "Failed"),
        ("CreateSnapshot", 3, "Timeout"),
        ("CreateSnapshot", 4, "Invalid Parameter"),
        ("CreateSnapshot", 5, "Invalid State"),
        ("DefineSystem", 6, "Invalid Type (Incompatible Parameters)"),
        ("CreateSnapshot", 4096, "Method Parameters Checked - Job Started"),
        ("RequestStateChange", 4096, "Transition Started"),
        ("ExportSystemDefinition", 32768, "Failed"),
        ("ExportSystemDefinition", 32769, "Access Denied"),
        ("ExportSystemDefinition", 32770, "Not Supported"),
        ("ExportSystemDefinition", 32771, "Status is unknown"),
        ("ExportSystemDefinition", 32772, "Timeout"),
        ("ExportSystemDefinition", 32773, "Invalid parameter"),
        ("ExportSystemDefinition", 32774, "System is in use"),
        ("RequestStateChange", 32775, "Invalid state for this operation"),
        ("ExportSystemDefinition", 32776, "Incorrect data type"),
        ("ExportSystemDefinition", 32777, "System is not available"),
        ("ExportSystemDefinition", 32778, "Out of memory"),
        ("GetVirtualHardDiskSettingData", 32779, "File not found"),
        ("ImportSystemDefinition", 32779, "File in Use"),
        ("validateplannedsystem", 32779, "File in Use"),
        ("CheckSystemCompatibilityInfo", 32784, "Not compatible"),
        ("ValidateVirtualHardDisk", 32787, "VHD differencing chain cycle detected"),
        ("CreateSnapshot", 100, "DMTF Reserved"),
        ("CreateSnapshot", 5000, "Method Reserved"),
        ("CreateSnapshot", 40000, "Vendor Specific"),
    ],
)
def test_describe(method: str, code: int, name: str) -> None:
    assert describe(method, code) == name
    assert label(method, code) == f"{code} ({name})"


def test_enum_values() -> None:
    assert ReturnCode.JOB_STARTED == 4096 and ReturnCode.MSVM_INVALID_STATE == 32775
    assert ReturnCode(32779).name == "FILE_NOT_FOUND_OR_IN_USE"
