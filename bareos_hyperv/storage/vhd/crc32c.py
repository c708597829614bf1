"""CRC-32C (Castagnoli), as VHDX headers, region tables and log entries use it.

[MS-VHDX] 2.2.2.1 / 2.2.3.1: "Checksum: A CRC-32C hash over the entire structure, with this field
set to zero" (polynomial 0x1EDC6F41, reflected 0x82F63B78, initial value and final XOR 0xFFFFFFFF).

Pure Python and table driven ("slicing by 4"), so the fd host needs no C extension. A 64 KiB region
table takes a few milliseconds, which is all the reader ever checksums: payload is never checksummed.
"""

from __future__ import annotations

import sys
from typing import List, Tuple, Union

__all__ = ["CRC32C_POLYNOMIAL_REFLECTED", "crc32c"]

#: Castagnoli polynomial 0x1EDC6F41 in reflected (LSB-first) form.
CRC32C_POLYNOMIAL_REFLECTED = 0x82F63B78


def _make_tables() -> Tuple[List[int], List[int], List[int], List[int]]:
    t0: List[int] = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLYNOMIAL_REFLECTED if crc & 1 else crc >> 1
        t0.append(crc)
    # Tables for the next three byte positions let the loop consume 4 bytes per iteration.
    t1 = [(t0[c & 0xFF] ^ (c >> 8)) for c in t0]
    t2 = [(t0[c & 0xFF] ^ (c >> 8)) for c in t1]
    t3 = [(t0[c & 0xFF] ^ (c >> 8)) for c in t2]
    return t0, t1, t2, t3


_T0, _T1, _T2, _T3 = _make_tables()
_NATIVE_LITTLE_ENDIAN = sys.byteorder == "little" and memoryview(b"\0\0\0\0").cast("I").itemsize == 4


def crc32c(data: Union[bytes, bytearray, memoryview], crc: int = 0) -> int:
    """Return the CRC-32C of ``data``.

    ``crc`` continues a previous result (``crc32c(b, crc32c(a)) == crc32c(a + b)``).
    """
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    crc ^= 0xFFFFFFFF
    view = memoryview(data).cast("B")
    tail = view
    if _NATIVE_LITTLE_ENDIAN:
        aligned = len(view) & ~3
        # Native "I" words are little-endian here, which is what the reflected CRC consumes.
        for word in view[:aligned].cast("I"):
            crc ^= word
            crc = t3[crc & 0xFF] ^ t2[(crc >> 8) & 0xFF] ^ t1[(crc >> 16) & 0xFF] ^ t0[crc >> 24]
        tail = view[aligned:]
    for byte in tail:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
