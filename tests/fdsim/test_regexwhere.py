"""Restores with regexwhere=, strip_prefix=, add_prefix=, add_suffix= (issue 11, item 10).

The director turns the three prefixes into a regexwhere (lib/breg.cc bregexp_build_where) and
sends ``regexwhere=`` instead of ``where=``; filed dir_cmd.cc RestoreCmd compiles it and leaves
jcr->where NULL; lib/attr.cc BuildAttrOutputFnames rewrites each ofname.  Measured on a real 25.1
fd (reference §12): ``!^@hyperv!/x/@hyperv!`` gives ``/x/@hyperv/...``, and rp.where,
rp.regexwhere, bVarWhere and bVarRegexWhere are all None.  The old emulation had no such restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from fdsim.breg import apply_bregexps, build_where, parse_bregexps
from fdsim.pyfiles import bareosfd as bfd

from .conftest import Env, make_data

ITEMS: List[Dict[str, Any]] = [{"name": "@t/vm1/a.txt", "size": 30, "pattern": "a"},
                               {"name": "@t/vm1/disks/0-b.bin", "size": 70, "pattern": "b"}]


def _backup(env: Env) -> None:
    env.write_spec(ITEMS)
    assert env.sim.backup(env.cmd(), plugin_dir=env.plugin_dir).status == "T"
    env.clear_log()


def _assert_relocated(env: Env, expected: List[Path]) -> None:
    creates = env.log_of("create_file")
    assert [c["ofname"] for c in creates] == [str(p) for p in expected]
    # the fd never fills where/regexwhere with a regexwhere, and bVarWhere stays None throughout
    assert {(c["where"], c["regexwhere"], c["var_where"]) for c in creates} == {(None, None, None)}
    assert {e["where"] for e in env.log_of("start_restore_file")} == {None}
    for item, path in zip(ITEMS, expected):
        assert path.read_bytes() == make_data(item)


def test_regexwhere_rewrites_each_name(env: Env, tmp_path: Path) -> None:
    _backup(env)
    dest = tmp_path / "x"
    rr = env.sim.restore(None, regexwhere=f"!^@t!{dest}/@t!", plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    _assert_relocated(env, [dest / i["name"] for i in ITEMS])
    assert [f.ofname for f in rr.files] == [str(dest / i["name"]) for i in ITEMS]


def test_strip_prefix_and_add_prefix(env: Env, tmp_path: Path) -> None:
    _backup(env)
    rr = env.sim.restore(None, strip_prefix="@t/", add_prefix=f"{tmp_path}/r/", plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    _assert_relocated(env, [tmp_path / "r" / i["name"][len("@t/"):] for i in ITEMS])


def test_add_prefix_alone_and_add_suffix(env: Env, tmp_path: Path) -> None:
    _backup(env)
    rr = env.sim.restore(None, add_prefix=f"{tmp_path}/p/", add_suffix=".old", plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    _assert_relocated(env, [tmp_path / "p" / (i["name"] + ".old") for i in ITEMS])


def test_regexwhere_wins_over_where(env: Env, tmp_path: Path) -> None:
    _backup(env)
    rr = env.sim.restore(None, where=str(tmp_path / "ignored"), regexwhere=f"!^!{tmp_path}/rw/!",
                         plugin_dir=env.plugin_dir)
    assert rr.status == "T", rr.log()
    _assert_relocated(env, [tmp_path / "rw" / i["name"] for i in ITEMS])
    assert not (tmp_path / "ignored").exists()


def test_a_regexwhere_that_does_not_compile_fails_the_restore(env: Env) -> None:
    _backup(env)
    rr = env.sim.restore(None, regexwhere="not-a-regexp", plugin_dir=env.plugin_dir)
    assert rr.status == "f"
    assert rr.texts(bfd.M_FATAL) == ["Bad where regexp. where=not-a-regexp\n"]
    assert env.log_of("create_file") == [] and rr.files == []
    assert bfd.bEventStartRestoreJob not in [e["event"] for e in env.log_of("event")]


# -- lib/breg.cc ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("where", "fname", "expected"), [
    ("!^@hyperv!/x/@hyperv!", "@hyperv/HV/web01/manifest.xml", "/x/@hyperv/HV/web01/manifest.xml"),
    ("!a!b!", "/aaa", "/baa"),  # the first match only, even with g
    ("!a!b!g", "/aaa", "/baa"),
    ("!A!b!i", "/aaa", "/baa"),
    ("!A!b!", "/aaa", "/aaa"),  # no match: unchanged
    ("#/(.*)/(.*)$#/$2/\\1#", "/d/f", "/f/d"),  # another separator, $N and \\N groups
    ("!^/!/r/!,!\\.txt$!.bak!", "/a.txt", "/r/a.bak"),  # two expressions, applied in turn
])
def test_where_regexps(where: str, fname: str, expected: str) -> None:
    regs = parse_bregexps(where)
    assert regs is not None
    assert apply_bregexps(fname, regs) == expected


@pytest.mark.parametrize("where", ["", "x!a!b!", "!a!b", "!(!x!", "!a"])
def test_where_regexps_that_do_not_compile(where: str) -> None:
    assert parse_bregexps(where) is None


def test_build_where_as_the_director_does() -> None:
    assert build_where("/home") == "!/home!!i"
    assert build_where(add_prefix="/r") == "!^!/r!"
    assert build_where(add_suffix=".old") == "!([^/])$!$1.old!"
    assert build_where("/a", "/b", ".c") == "!/a!!i,!([^/])$!$1.c!,!^!/b!"
    assert build_where("a!b\\c") == "!a\\!b\\\\c!!i"  # the separator and backslashes escaped
