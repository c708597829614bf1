"""A restore plan as readable lines for the Bareos job log (and ``restore_dry_run=yes``).

Wording follows Hyper-V's own ``Compare-VM`` report: each incompatibility says what is wrong and
what it means, followed by the option that resolves it.  Every line is shorter than 200
characters (long paths are shortened in the middle, long messages wrapped), and control or format
characters from a manifest are shown escaped, so a forged name cannot forge job-log lines.
"""

from __future__ import annotations

import textwrap
import unicodedata
from typing import List, Optional

from bareos_hyperv.restore.plan import DiskPlacement, SwitchDecision, VmPlan, format_size

__all__ = ["MAX_LINE", "render_plan"]

MAX_LINE = 199  # Bareos job messages stay readable; callers may rely on "< 200 characters"
_WIDTH = 150  # wrapping width for prose
_PATH = 150  # longest path shown in full


def _escape(text: str) -> str:
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _clip(text: str, limit: int = _PATH) -> str:
    """``text`` (escaped) shortened in the middle to at most ``limit`` characters."""
    text = _escape(text)
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep // 2] + "\u2026" + text[-(keep - keep // 2) :]


def _wrap(first: str, text: str, indent: str) -> List[str]:
    lines = textwrap.wrap(_escape(text), width=_WIDTH, initial_indent=first, subsequent_indent=indent,
                          break_long_words=True, break_on_hyphens=False)
    return lines or [first.rstrip()]


def _name(text: str) -> str:
    return "'" + _clip(text, 100) + "'"


def _host_value(value: Optional[int], unit: str) -> str:
    return "unknown" if value is None else f"{value} {unit}"


def _header(plan: VmPlan) -> List[str]:
    source = plan.source
    where = f"cluster {plan.cluster}" if plan.cluster else f"host {plan.node or plan.entry or '?'}"
    node = f", node {plan.node}" if plan.cluster and plan.node else ""
    why = f" ({plan.node_reason})" if plan.node_reason else ""
    lines = [f"Restore plan: VM {_name(source.name)} ({source.guid}) from backup job {plan.backup_job_id} "
             f"-> {where}{node}{why}"]
    if plan.name != source.name:
        lines.append(f"  Name        {_name(source.name)} -> {_name(plan.name)} (restore_vm_name)")
    else:
        lines.append(f"  Name        {_name(plan.name)} (kept)")
    if plan.keep_id:
        lines.append(f"  ID          {source.guid} (kept)")
    else:
        lines.append(f"  ID          new ID (Hyper-V assigns it; {source.guid} stays with the existing VM)")
    old = plan.overwrite
    if old is not None:
        off = "; it is turned off first (restore_force_off=yes)" if plan.force_off else ""
        lines.append(f"  Replaces    {_name(old.name)} ({old.guid}) on {old.node}, {old.state.value}: removed with "
                     f"its disks after the new disks are written and verified{off}")
        if plan.removed_files:
            lines.append(f"              {len(plan.removed_files)} of its disk files are removed, not replaced")
    if plan.cluster:
        role = f"highly available in {plan.cluster}" if plan.cluster_role else "not highly available"
        lines.append(f"  Cluster     {role} (restore_cluster_role)")
    versions = ", ".join(plan.host_config_versions) or "unknown"
    lines.append(f"  Version     configuration {_clip(plan.config_version, 20)}; {plan.node or '?'} runs {versions}")
    lines.append(f"  Generation  {int(plan.generation)}")
    lines.append(f"  Processors  {plan.processors} (host: {_host_value(plan.host_logical_processors, 'logical')})")
    dynamic = " at startup, dynamic" if plan.dynamic_memory else ""
    lines.append(f"  Memory      {plan.memory_mb} MB{dynamic} (host: {_host_value(plan.host_memory_mb, 'MB')})")
    lines.append(f"  Config      {_clip(plan.config_root) or '(no folder)'} ({plan.config_reason.value})")
    lines.append(f"  Staging     {_clip(plan.staging_folder) or '(no folder)'} "
                 f"({len(plan.config_files)} configuration file{'' if len(plan.config_files) == 1 else 's'})")
    if plan.start:
        lines.append("  Start       the VM is started after the restore (restore_start=yes)")
    return lines


def _disk_lines(disk: DiskPlacement) -> List[str]:
    why = disk.reason.value
    if disk.reason is not disk.folder_reason:
        why += f"; folder: {disk.folder_reason.value}"
    lines = [f"  {disk.slot!s:<9} {disk.file_index:<5} {format_size(disk.size):>10}  {why}"]
    lines.append(f"  {'':<9} from  {_clip(disk.source_path)}")
    lines.append(f"  {'':<9} to    {_clip(disk.dest_path) or '(no destination)'}")
    if disk.parent_dest_path:
        lines.append(f"  {'':<9} parent {_clip(disk.parent_dest_path)}")
    return lines


def render_plan(plan: VmPlan) -> List[str]:
    """The plan as job-log lines (each shorter than 200 characters)."""
    lines = _header(plan)
    if plan.disks:
        lines.append(f"Disks ({len(plan.disks)} files):")
        lines.append(f"  {'Slot':<9} {'File':<5} {'Size':>10}  Why")
        for disk in plan.disks:
            lines += _disk_lines(disk)
    else:
        lines.append("Disks: none")
    if plan.adapters:
        lines.append("Network adapters:")
        for adapter in plan.adapters:
            mac = f"{adapter.mac}{', static MAC' if adapter.static_mac else ''}"
            source = _name(adapter.source_switch) if adapter.source_switch else "(none)"
            dest = _name(adapter.dest_switch) if adapter.dest_switch else "(none)"
            arrow = "" if adapter.decision is SwitchDecision.WAS_DISCONNECTED else f" -> {dest}"
            lines.append(f"  {_name(adapter.name)} ({mac}): {source}{arrow}: {adapter.decision.value}")
    if plan.dropped:
        lines.append("Devices that do not come back as they were:")
        for device in plan.dropped:
            lines += _wrap(f"  {_clip(device.slot_or_name, 40)}: {device.action.value}: ", device.reason, "      ")
    if plan.volumes:
        lines.append("Space:")
        lines.append(f"  {'Volume':<40} {'Needed':>10} {'Free':>10}")
        for volume in plan.volumes:
            free = "unknown" if volume.free is None else format_size(volume.free)
            flag = "  NOT ENOUGH" if volume.short else ""
            lines.append(f"  {_clip(volume.volume, 40):<40} {format_size(volume.needed):>10} {free:>10}{flag}")
    if plan.notes:
        lines.append("Notes:")
        for note in plan.notes:
            lines += _wrap("  - ", note, "    ")
    if plan.problems:
        count = len(plan.problems)
        lines.append(f"Incompatibilities ({count}): nothing is written until each one is resolved")
        for number, problem in enumerate(plan.problems, start=1):
            lines += _wrap(f"  {number}. ", problem.message, "     ")
            lines += _wrap("     Resolve: ", problem.resolve, "     ")
        lines.append(f"Result: refused, {count} incompatibilit{'y' if count == 1 else 'ies'} to resolve")
    else:
        lines.append("Result: ready to restore")
    # Last guard: whatever a value held, no line reaches 200 characters or carries a control character.
    return [_clip(line, MAX_LINE) for line in lines]
