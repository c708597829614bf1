"""The disk-file base a job leaves for the next one (a Bareos restore object)."""

from __future__ import annotations

import hashlib
import json

import pytest

from bareos_hyperv.backup.base import DiskBase, base_object_name, previous_backup
from bareos_hyperv.errors import ManifestError
from bareos_hyperv.model.backup import ChainPart, PartKind
from bareos_hyperv.protocol.messages import RestoreObject
from bareos_hyperv.storage.delta import ChunkHasher

VM = "5B2C8E61-0F3A-4C5D-9E7B-1A2B3C4D5E6F"


def _base(**changes: object) -> DiskBase:
    hasher = ChunkHasher(1 << 20)
    hasher.update(bytes(range(256)) * 20000)
    base = DiskBase(vm_guid=VM, index=3, path="C:\\VMs\\Disk.VHDX", disk_format="VHDX", disk_id="id",
                    virtual_size=1 << 30, block_size=1 << 25, job_id=12, hashes=hasher.finish(),
                    sha256=hashlib.sha256(b"s").hexdigest(),
                    chain=[ChainPart(10, "disks/3-Disk.VHDX", PartKind.DISK, "ab" * 32)],
                    bat_offset=3 << 20, bat=bytes(4096) + b"\x06" * 8)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_round_trip() -> None:
    base = _base()
    again = DiskBase.from_text(base.to_text(), source="b")
    assert again == base and again.digest == base.digest
    assert base_object_name("@hyperv/C/vm", 3) == "@hyperv/C/vm/base-3.object.json"


@pytest.mark.parametrize("damage", ["digest", "hashes", "kind", "version", "json"])
def test_damage_is_named(damage: str) -> None:
    text = _base().to_text()
    doc = json.loads(text)
    if damage == "digest":
        doc["digest"] = "00" * 32
    elif damage == "hashes":
        doc["hashes"] = doc["hashes"][:-8]
    elif damage == "kind":
        doc["kind"] = "something else"
    elif damage == "version":
        doc["version"] = 2
    text = "{" if damage == "json" else json.dumps(doc)
    with pytest.raises(ManifestError, match="the disk base b"):
        DiskBase.from_text(text, source="b")


def test_previous_backup_sorts_objects_per_vm_and_reports_what_it_cannot_use() -> None:
    good = RestoreObject(jobid=12, name="@hyperv/C/vm/base-3.object.json", data=_base().to_text())
    bad = RestoreObject(jobid=12, name="@hyperv/C/vm/base-4.object.json", data="{}")
    previous = previous_backup([good, bad])
    assert previous.job_id == 12
    assert previous.vms == {}  # a base without its VM's manifest is not used
    assert len(previous.problems) == 1 and "base-4" in previous.problems[0]
