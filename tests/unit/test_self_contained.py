"""A clean clone must run every test: nothing may reach outside the repository for its inputs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_absolute_paths_into_the_build_machine() -> None:
    offenders = []
    for top in ("tests", "bench", "bareos_hyperv", "hvsim", "fdsim", "packaging"):
        for path in (ROOT / top).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(encoding="utf-8")
            if "/work/" in text or '"shared" / "fixtures"' in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_third_party_fixtures_travel_with_their_licences() -> None:
    shared = ROOT / "tests" / "fixtures" / "shared"
    assert (shared / "PROVENANCE.md").is_file()
    assert any((shared / "LICENSES").iterdir())
