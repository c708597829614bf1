"""Save-set store and catalog: selection like bconsole "restore most recent", listing, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from fdsim.store import FileRecord, SaveSetStore, StoreError

FILESET = ["python3:module_name=m:x=1"]


def _job(store: SaveSetStore, level: str, files: List[Tuple[str, int, bytes]], status: str = "T") -> int:
    job = store.new_job("b", "B", level, 1000 + len(store.jobs()))
    job.fileset = list(FILESET)
    writer = store.writer(job)
    for name, ftype, data in files:
        rec = FileRecord(jobid=job.jobid, file_index=writer.new_file_index(), fname=name, type=ftype,
                         statp={"st_size": len(data), "st_mtime": 7}, cmd=FILESET[0])
        if ftype == 23:
            writer.add_catalog_only(rec)
            continue
        writer.begin_item(rec, {"fname": name, "type": ftype})
        if data:
            writer.data(0, data)
        writer.end_item()
    job.status = status
    store.commit(job, writer)
    return job.jobid


def test_most_recent_selection(tmp_path: Path) -> None:
    store = SaveSetStore(tmp_path)
    f1 = _job(store, "F", [("/m/manifest", 3, b"m1"), ("/m/disk", 3, b"full1")])
    _job(store, "I", [("/m/manifest", 3, b"i-old")])
    f2 = _job(store, "F", [("/m/manifest", 3, b"m2"), ("/m/disk", 3, b"full2"), ("/m/gone", 3, b"g")])
    i1 = _job(store, "I", [("/m/manifest", 3, b"m3"), ("/m/disk+I+4", 3, b"delta4")])
    d1 = _job(store, "D", [("/m/manifest", 3, b"m4"), ("/m/disk+D+5", 3, b"diff5"), ("/m/gone", 23, b"")])
    _job(store, "I", [("/m/manifest", 3, b"broken")], status="f")
    i2 = _job(store, "I", [("/m/disk+I+7", 3, b"delta7")])
    ids = store.most_recent_jobids(FILESET)
    assert ids == [f2, d1, i2]  # the Incremental before the Differential is superseded
    assert i1 not in ids and f1 not in ids
    sel = store.select_files(ids)
    assert [(r.jobid, r.fname) for r in sel] == [(f2, "/m/disk"), (d1, "/m/manifest"), (d1, "/m/disk+D+5"),
                                                 (i2, "/m/disk+I+7")]
    item = store.read_item(sel[1])
    assert [d for _, d in store.read_data(sel[1].jobid, item.data)] == [b"m4"]
    assert [r.fname for r in store.select_files(ids, ["/m/disk*"])] == ["/m/disk", "/m/disk+D+5", "/m/disk+I+7"]
    assert [r.fname for r in store.select_files(ids, ["/m/"])] == [r.fname for r in sel]
    assert store.previous_job("I", FILESET).jobid == i2  # type: ignore[union-attr]
    assert store.previous_job("D", FILESET).jobid == f2  # type: ignore[union-attr]
    assert store.list_files(d1) == ["/m/manifest", "/m/disk+D+5", "/m/gone"]
    # persisted: a second store object on the same directory sees the same catalog
    again = SaveSetStore(tmp_path)
    assert again.most_recent_jobids(FILESET) == ids
    assert "level=D" in again.format_listing(d1)
    with pytest.raises(StoreError, match="no job with JobId 99"):
        again.list_files(99)
    with pytest.raises(StoreError, match="no successful Full"):
        again.most_recent_jobids(["python3:other"])
