r"""What a VM's configuration version changes in the simulator: file format, checkpoints, RCT.

A VM kept at configuration version 5.0 (made on Windows Server 2012 R2 and moved or upgraded in
place to 2016/2019, which still run 5.0) is a 2012 R2 VM in all of these respects:

* **Configuration files.** "When you update the configuration version, you change the file
  structure that is used to store the virtual machines configuration and the checkpoint files"
  (Microsoft, "Upgrade virtual machine version in Hyper-V on Windows or Windows Server"): a 5.0
  VM keeps the 2012 R2 layout, ``Virtual Machines\<GUID>.xml`` plus a ``Virtual Machines\<GUID>\``
  folder for the runtime state (``<GUID>.bin`` memory placeholder, ``<GUID>.vsv`` saved state),
  ``Snapshots\<SnapGUID>.xml``; an export writes the same shape (``reference/hyperv-wmi.md``
  §3.3).  The simulator writes its JSON serialisation into the ``.xml`` as it does into ``.vmcx``
  (the content is the simulator's either way; the names and the folder are what a client meets).
* **No resilient change tracking.** "If your virtual machine still at version 5.0, you will not take
  the benefit of RCT support, because a virtual machine with version 5.0 might be taken to a host
  running Windows Server 2012 R2 ... Microsoft will not use RCT in this case, and will use
  differencing disk instead" (MicrosoftDocs/Virtualization-Documentation,
  ``prospective-docs/Hyper-V-Backup-2016.md``).  Microsoft's upgrade page (above) lists
  "Production Checkpoints" with minimum configuration version 6.2.
* **No reference points.** Reference points exist to carry RCT ids (``hyperv-wmi.md`` §4.3:
  ConvertToReferencePoint "2016+", RCT-based reference points); for a 5.0 VM
  ``ConvertToReferencePoint`` fails.  How it fails is not captured: :data:`CONVERT_FAILURE`.
* **Recovery checkpoints.** Not documented for 5.0.  Backup vendors report both behaviours in
  effect: AnyBackup keeps "a copy of checkpoint named Backup" on 4.0/5.0 VMs after a backup
  (a backup checkpoint exists, it is not turned into a reference point), while ``hyperv-wmi.md``
  §4.3 counts recovery snapshots among the 2016 backup features a 2012 R2 VM lacks.  Both are
  modelled (:data:`RECOVERY_CHECKPOINTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# First configuration version with .vmcx files, production checkpoints, RCT and reference points.
MODERN = (6, 2)

# CreateSnapshot with SnapshotType 32768 (recovery) on a VM of configuration version 5.0 or older.
RECOVERY_CHECKPOINTS = {
    # the checkpoint is made (differencing disks, no memory): AnyBackup's observation
    "allowed",
    # the job fails with an error naming the configuration version.  Wording not captured.
    "refused",
}

# ConvertToReferencePoint on such a VM.
CONVERT_FAILURE = {
    # the method starts a job that ends in Exception (ErrorCode 32768) with an error text
    "job",
    # the method answers 1 (Not Supported) without a job
    "not_supported",
}

_CHOICES = {"recovery_checkpoints": RECOVERY_CHECKPOINTS, "convert_failure": CONVERT_FAILURE}


def parse(version: str) -> tuple[int, int]:
    """``major.minor`` as numbers ((0, 0) when it does not parse)."""
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def is_legacy(version: str) -> bool:
    """A configuration version below 6.2: XML files, no RCT, no reference points, no production checkpoints."""
    return parse(version) < MODERN


def config_extension(version: str) -> str:
    """``.xml`` for a legacy configuration version, ``.vmcx`` from 6.2 on."""
    return ".xml" if is_legacy(version) else ".vmcx"


@dataclass
class LegacyBehaviour:
    """How the node treats a legacy-version VM where real hosts are not documented (per VM)."""

    recovery_checkpoints: str = "allowed"
    convert_failure: str = "job"

    def __setattr__(self, name: str, value: Any) -> None:
        allowed = _CHOICES.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"hvsim: {name} must be one of {sorted(allowed)}, not {value!r}")
        super().__setattr__(name, value)
