"""Return values of Hyper-V WMI methods (``reference/hyperv-wmi.md`` 6.1).

Two families share the number space: the CIM family (DefineSystem, CreateSnapshot,
ConvertToReferencePoint, DestroySnapshot, Modify/Add/RemoveResourceSettings ...) uses
1..6 for its errors, the Msvm family (export/import, planned systems, the image
service, DestroyReferencePoint, GetErrorEx, RequestStateChange ...) uses 32768 and up.
A few values mean different things per method; :func:`describe` decodes by method.
"""

from __future__ import annotations

import enum
from typing import Dict


class ReturnCode(enum.IntEnum):
    """Method return values (names for logs; meaning per family in :func:`describe`)."""

    COMPLETED = 0
    NOT_SUPPORTED = 1
    FAILED = 2
    TIMEOUT = 3
    INVALID_PARAMETER = 4
    INVALID_STATE = 5
    INCOMPATIBLE_PARAMETERS = 6
    JOB_STARTED = 4096
    MSVM_FAILED = 32768
    ACCESS_DENIED = 32769
    MSVM_NOT_SUPPORTED = 32770
    STATUS_UNKNOWN = 32771
    MSVM_TIMEOUT = 32772
    MSVM_INVALID_PARAMETER = 32773
    SYSTEM_IN_USE = 32774
    MSVM_INVALID_STATE = 32775
    INCORRECT_DATA_TYPE = 32776
    SYSTEM_NOT_AVAILABLE = 32777
    OUT_OF_MEMORY = 32778
    FILE_NOT_FOUND_OR_IN_USE = 32779
    NOT_COMPATIBLE = 32784
    VHD_CHAIN_CYCLE = 32787


SUCCESS = frozenset({ReturnCode.COMPLETED})
ASYNC = ReturnCode.JOB_STARTED

_CIM_NAMES: Dict[int, str] = {
    0: "Completed with No Error",
    1: "Not Supported",
    2: "Failed",
    3: "Timeout",
    4: "Invalid Parameter",
    5: "Invalid State",
    6: "Invalid Type (Incompatible Parameters)",
    4096: "Method Parameters Checked - Job Started",
}

_MSVM_NAMES: Dict[int, str] = {
    32768: "Failed",
    32769: "Access Denied",
    32770: "Not Supported",
    32771: "Status is unknown",
    32772: "Timeout",
    32773: "Invalid parameter",
    32774: "System is in use",
    32775: "Invalid state for this operation",
    32776: "Incorrect data type",
    32777: "System is not available",
    32778: "Out of memory",
    32779: "File not found",
    32784: "Not compatible",
    32787: "VHD differencing chain cycle detected",
}

# 32779 is "File in Use" for these methods (their MSDN return-value tables), "File not found" elsewhere.
_FILE_IN_USE_METHODS = frozenset({"importsystemdefinition", "validateplannedsystem"})


def describe(method: str, code: int) -> str:
    """Name of ``code`` as returned by ``method`` (``File in Use`` for 32779 of ImportSystemDefinition)."""
    lname = method.lower()
    if code == 4096 and lname == "requeststatechange":
        return "Transition Started"
    if code == 32779 and lname in _FILE_IN_USE_METHODS:
        return "File in Use"
    if code in _CIM_NAMES:
        return _CIM_NAMES[code]
    if code in _MSVM_NAMES:
        return _MSVM_NAMES[code]
    if 7 <= code <= 4095:
        return "DMTF Reserved"
    if 4097 <= code <= 32767:
        return "Method Reserved"
    return "Vendor Specific"


def label(method: str, code: int) -> str:
    """``"32775 (Invalid state for this operation)"``: number and name, for messages."""
    return f"{code} ({describe(method, code)})"
