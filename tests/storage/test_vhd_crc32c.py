"""CRC-32C: published check values, a bitwise reference, and checksums stored in real VHDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bareos_hyperv.storage.vhd.crc32c import CRC32C_POLYNOMIAL_REFLECTED, crc32c

FIXTURES = (Path(__file__).resolve().parents[2] / "tests/fixtures/shared/vhd")


def _crc32c_bitwise(data: bytes) -> int:
    """Textbook bit-at-a-time CRC-32C, independent of the table-driven implementation."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_polynomial_is_castagnoli() -> None:
    assert CRC32C_POLYNOMIAL_REFLECTED == 0x82F63B78


def test_check_value_and_rfc3720_vectors() -> None:
    # "123456789" check value (CRC catalogue) and RFC 3720 appendix B.4 vectors.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"") == 0


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_matches_bitwise_reference_and_continues(data: bytes, split: int) -> None:
    split = min(split, len(data))
    assert crc32c(data) == _crc32c_bitwise(data)
    assert crc32c(data[split:], crc32c(data[:split])) == crc32c(data)


def test_accepts_memoryview_and_bytearray() -> None:
    data = bytes(range(256)) * 3 + b"xyz"
    assert crc32c(memoryview(data)) == crc32c(bytearray(data)) == _crc32c_bitwise(data)


def test_header_checksum_stored_by_windows() -> None:
    # Header 1 of a VHDX written by Windows 10: CRC-32C over 4 KiB with the checksum field zeroed.
    with gzip.open(FIXTURES / "dissect-dynamic.vhdx.gz", "rb") as fh:
        head = fh.read(320 * 1024)
    for offset, size in ((64 * 1024, 4096), (128 * 1024, 4096), (192 * 1024, 65536), (256 * 1024, 65536)):
        raw = head[offset : offset + size]
        stored = int.from_bytes(raw[4:8], "little")
        assert crc32c(raw[:4] + b"\0\0\0\0" + raw[8:]) == stored
