"""The pure-Python ``bareosfd``: constants and packet member semantics (reference §4, §5)."""

from __future__ import annotations

import time

import pytest

from fdsim.pyfiles import bareosfd as bfd


def test_constants_and_bytes_keyed_dicts() -> None:
    assert bfd.bRCs[b"bRC_OK"] == bfd.bRC_OK == 0
    assert bfd.bRCs[b"bRC_Cancel"] == 8
    assert bfd.bJobMessageType[b"M_FATAL"] == bfd.M_FATAL == 3
    assert b"M_AUDIT" not in bfd.bJobMessageType
    assert bfd.bFileType[b"FT_RESTORE_FIRST"] == 25 and bfd.FT_PLUGIN_CONFIG_FILLED == 28
    assert bfd.bEventType[b"bEventCancelCommand"] == 14 and len(bfd.bEventType) == 31
    assert bfd.bVariable[b"bVarUsedConfig"] == 21 and not hasattr(bfd, "bVarPluginPath")
    assert bfd.bIOPS[b"IO_SEEK"] == 5 and bfd.bIOPstatus[b"iostat_do_in_core"] == 1
    assert bfd.bCFs[b"CF_CORE"] == 5
    assert bfd.L_INCREMENTAL == "I" and bfd.bLevels[b"L_NONE"] == " "
    assert all(isinstance(k, bytes) for d in (bfd.bRCs, bfd.bLevels, bfd.bVariable) for k in d)


def test_stat_packet_defaults_and_unsigned_members() -> None:
    before = int(time.time())
    st = bfd.StatPacket()
    assert st.st_size == 2**64 - 1
    assert st.st_mode == 0o100700 and st.st_blksize == 4096 and st.st_blocks == 1 and st.st_nlink == 0
    assert before <= st.st_mtime <= int(time.time()) + 1
    assert "mode=0700" in repr(st) and "size=18446744073709551615" in repr(st)
    st.st_size = 5
    assert st.st_size == 5
    with pytest.raises(TypeError):
        st.st_size = "5"
    with pytest.raises(TypeError):
        bfd.StatPacket(st_size=1)  # type: ignore[call-arg]  # keywords have no st_ prefix
    with pytest.raises(AttributeError):
        st.size = 1  # type: ignore[attr-defined]


def test_save_packet_member_types() -> None:
    sp = bfd.SavePacket(fname="/x", type=bfd.FT_REG)
    with pytest.raises(TypeError, match="readonly"):
        sp.cmd = "python3:x"
    with pytest.raises(TypeError, match="bool"):
        sp.no_read = 1
    sp.no_read = True
    sp.statp = "anything"  # T_OBJECT accepts anything; the fd checks it when reading back
    del sp.statp
    assert sp.statp is None
    with pytest.raises(TypeError):
        del sp.type
    with pytest.raises(TypeError):
        bfd.SavePacket(statp=bfd.StatPacket())  # type: ignore[call-arg]


def test_other_packets() -> None:
    rp = bfd.RestorePacket._fdsim_make(ofname="/r/x", where="/r", regexwhere=None, attrEX="", olname="",
                                       statp=bfd.StatPacket(), create_status=bfd.CF_ERROR, filedes=-1)
    rp.create_status = bfd.CF_CORE
    with pytest.raises(TypeError):
        rp.ofname = "/elsewhere"
    assert "RegexWhere=" in repr(rp) and "attrEx=" in repr(rp)
    iop = bfd.IoPacket._fdsim_make(func=bfd.IO_READ, fname=None, count=10, win32=False)
    iop.buf = bytearray(b"abc")
    with pytest.raises(TypeError):
        iop.win32 = 0
    with pytest.raises(TypeError):
        iop.fname = "x"
    acl = bfd.AclPacket._fdsim_make(fname="/x", content=None)
    acl.content = b"bytes are accepted here; the fd refuses them when it reads the packet"
    rop = bfd.RestoreObject._fdsim_make(plugin_name="python3:x", object=bytearray(b"o"), jobid=3)
    with pytest.raises(TypeError):
        rop.plugin_name = "other"


def test_core_functions_need_the_job_context() -> None:
    for call in (lambda: bfd.GetValue(bfd.bVarJobId), lambda: bfd.JobMessage(bfd.M_INFO, "x"),
                 lambda: bfd.DebugMessage(100, "x"), lambda: bfd.RegisterEvents([1])):
        with pytest.raises(RuntimeError, match="plugin_ctx is unset"):
            call()
    with pytest.raises(TypeError):
        bfd.GetValue("bVarJobId")  # type: ignore[arg-type]
