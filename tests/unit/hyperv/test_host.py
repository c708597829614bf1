from __future__ import annotations

from bareos_hyperv.hyperv.host import build_from_product_version, supported_versions


def test_build_from_identify_product_version() -> None:
    assert build_from_product_version("OS: 10.0.17763 SP: 0.0 Stack: 3.0") == 17763
    assert build_from_product_version("OS: 6.3.9600 SP: 0.0 Stack: 3.0") == 9600
    assert build_from_product_version("garbage") is None


def test_supported_versions_follow_microsofts_table() -> None:
    assert "5.0" in supported_versions(17763) and "9.0" in supported_versions(17763)
    # 2022 and 2025 cannot run configuration versions 5.0-7.1
    assert "5.0" not in supported_versions(20348) and "10.0" in supported_versions(20348)
    assert "12.0" in supported_versions(26100)
    assert supported_versions(9600) == ["5.0"]
    assert supported_versions(None) == []
