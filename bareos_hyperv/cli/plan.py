"""``bareos-hyperv plan``: the restore plan the plugin would carry out for a VM, changing nothing.

The manifest is a backup's ``manifest.xml`` from a restore to a directory
(``<where>/@hyperv/<cluster-or-host>/<vm>/manifest.xml``), or the final manifest a restore job
receives as a restore object (``manifest.object.xml``).  The ``manifest.xml`` in the save set is
written before the data, so it does not list the saved files yet: they are taken from the tree
next to it (``SHA256SUMS``, the sizes of ``config/`` and ``disks/``), as the backup recorded them.
The destination is read live, as a restore job reads it (inventory, node memory, files in the
folders the plan would write to), and the plan is printed as the job log prints it, with the
flags of this command where the job log names ``restore_*`` options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, List, Optional

from bareos_hyperv.cli.common import cli_advice, connect
from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.manifest.document import Manifest, from_xml
from bareos_hyperv.model.backup import PartKind, SaveSetPart
from bareos_hyperv.model.restore import DiskMapping, MissingSwitch, RestoreOptions, SwitchMapping, parse_pairs
from bareos_hyperv.restore.facts import gather_destination
from bareos_hyperv.restore.plan import VmPlan, candidate_folders, default_entry, make_plan
from bareos_hyperv.restore.render import render_plan

__all__ = ["add_plan_args", "read_manifest", "restore_options", "run_plan"]


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The restore choices, one flag per ``restore_*`` plugin option."""
    p.add_argument("--manifest", required=True, metavar="FILE",
                   help="the VM's manifest.xml (from a restore to a directory) or manifest.object.xml")
    g = p.add_argument_group("restore choices (the restore_* plugin options)")
    g.add_argument("--node", metavar="NODE", help="owner node in a cluster (restore_node; default: the original "
                                                  "owner if up, else the node with most memory)")
    g.add_argument("--vm-name", metavar="NAME", help="the restored VM's name (restore_vm_name; default: keep)")
    ident = g.add_mutually_exclusive_group()
    ident.add_argument("--new-id", dest="new_id", action="store_true", default=None,
                       help="give the VM a new ID: a copy (restore_new_id=yes)")
    ident.add_argument("--keep-id", dest="new_id", action="store_false",
                       help="keep the VM's ID, refuse if a VM at the destination has it (restore_new_id=no)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the VM with the same ID (restore_overwrite=yes)")
    g.add_argument("--force-off", action="store_true",
                   help="with --overwrite: turn the old VM off if it runs (restore_force_off=yes)")
    g.add_argument("--storage", metavar="FOLDER",
                   help="one folder or CSV for configuration and disks (restore_storage)")
    g.add_argument("--disk-map", default="", metavar="DISK=FOLDER,...",
                   help="a disk by file name, source path or slot (SCSI 0:1) to a folder (restore_disk_map)")
    g.add_argument("--switch-map", default="", metavar="OLD=NEW,...",
                   help="switch names at the destination (restore_switch_map)")
    g.add_argument("--missing-switch", default="fail", choices=["fail", "disconnect"],
                   help="adapters whose switch is missing: refuse (default) or disconnect (restore_missing_switch)")
    role = g.add_mutually_exclusive_group()
    role.add_argument("--cluster-role", dest="cluster_role", action="store_true", default=None,
                      help="make the VM highly available (default in a cluster)")
    role.add_argument("--no-cluster-role", dest="cluster_role", action="store_false",
                      help="do not make the VM highly available")
    g.add_argument("--start", action="store_true", help="start the VM after the restore (restore_start=yes)")


def restore_options(args: argparse.Namespace) -> RestoreOptions:
    """The typed restore options from the flags; every contradiction in one error."""
    problems: List[str] = []
    disk_pairs, bad = parse_pairs(args.disk_map, "--disk-map")
    problems += bad
    switch_pairs, bad = parse_pairs(args.switch_map, "--switch-map")
    problems += bad
    if args.overwrite and args.new_id is True:
        problems.append("--overwrite replaces the VM with the same ID and contradicts --new-id")
    if args.force_off and not args.overwrite:
        problems.append("--force-off only applies with --overwrite")
    if problems:
        raise ConfigurationError("restore choices refused: " + "; ".join(problems),
                                 what_to_do="correct the flags (see bareos-hyperv plan --help)")
    return RestoreOptions(host=args.host, vm_name=args.vm_name, new_id=args.new_id, overwrite=args.overwrite,
                          force_off=args.force_off, storage=args.storage,
                          disk_map=[DiskMapping(a, b) for a, b in disk_pairs],
                          switch_map=[SwitchMapping(a, b) for a, b in switch_pairs],
                          missing_switch=MissingSwitch(args.missing_switch), start=args.start,
                          cluster_role=args.cluster_role, node=args.node)


def read_manifest(path: str) -> Manifest:
    """The manifest file, validated as a restore validates it, its parts completed from the tree."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the manifest {path}: {exc.strerror}",
                                 what_to_do="give --manifest the manifest.xml of a restore to a directory") from None
    manifest = from_xml(data, source=path)
    if manifest.backup.parts:
        return manifest
    return parts_from_tree(manifest, Path(path).parent)


def parts_from_tree(manifest: Manifest, tree: Path) -> Manifest:
    """The manifest with the parts the VM's restored tree shows (``SHA256SUMS`` and the files' sizes).

    Disk sizes come from the restored files, or from the manifest's disk chains when only the
    manifest and the digests were restored.  Without ``SHA256SUMS`` the manifest stays as it is
    (the plan then says what it lacks).
    """
    sums = tree / "SHA256SUMS"
    if not sums.is_file():
        return manifest
    sizes = {f.index: f.file_size for d in manifest.disks for f in d.chain}
    parts = []
    for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        name = name.strip()
        if not name or "/" not in name or ".." in name.split("/"):
            continue
        folder, _, file = name.partition("/")
        local = tree / folder / file
        size = local.stat().st_size if local.is_file() else None
        if folder == "config":
            parts.append(SaveSetPart(PartKind.CONFIG, name, size or 0, digest))
        elif folder == "disks" and "+" not in file and file.split("-", 1)[0].isdigit():
            index = int(file.split("-", 1)[0])
            parts.append(SaveSetPart(PartKind.DISK, name, size if size is not None else sizes.get(index, 0),
                                     digest, index))
    return dataclasses.replace(manifest, backup=dataclasses.replace(manifest.backup, parts=parts))


def make(args: argparse.Namespace, manifest: Manifest, options: RestoreOptions) -> VmPlan:
    """Read the destination and plan (nothing is changed)."""
    conns = connect(args)
    try:
        destination = gather_destination(
            conns.connector, default_entry(manifest, options), storage=conns.storage, resolver=conns.resolver,
            candidate_folders=lambda bare: candidate_folders(manifest, options, bare))
    finally:
        conns.close()
    return make_plan(manifest, options, destination, job_id=0)


def run_plan(args: argparse.Namespace, out: Optional[Callable[[str], object]] = None,
             manifest: Optional[Manifest] = None) -> int:
    """Print the plan; 0 when it is ready, 1 when it has blocking problems."""
    out = out or sys.stdout.write
    options = restore_options(args)
    chosen = manifest or read_manifest(args.manifest)
    plan = make(args, chosen, options)
    for line in render_plan(plan):
        out((cli_advice(line) or "") + "\n")
    return 0 if plan.ok else 1
