r"""Plugin options, declared with types and defaults in the style of Bareos's Proxmox plugin.

Runs inside bareos-fd: standard library only.  Each option is declared once with
:func:`make_opt` (type, default, which sources need it); values arrive as ``key=value`` items of
the plugin definition, are converted once (``yes/on/true/1``, ``no/off/false/0``; base-10
integers) and validated together, so an operator sees every missing option in one message.

Precedence follows ``BareosFdPluginBaseclass``: the first value given for a key wins.  At
restore the director sends ``pluginoptions`` in front of the backup-time definition, so restore
overrides win; at backup a later ``pluginoptions`` can only add keys.

Options whose name starts with ``restore_`` matter only at restore; they are accepted (and
ignored) at backup so that one FileSet line can carry them.

Problems are remembered, not raised, while the definition is parsed
(:meth:`PluginOptions.collect_definition`): a fatal error while a real Bareos 25.1 fd parses the
fileset cancels the job before its storage-daemon handshake and three more fatal lines follow
(reference §12).  :meth:`PluginOptions.check` and :meth:`PluginOptions.restore_options` report them
all at once, when the job starts its work.

Spellings that survive the director (see README, "Writing option values"): inside a quoted string
of ``bareos-dir.conf`` (``lib/lex.cc``) and in a bconsole command (``lib/scan.cc`` ``next_arg``) a
backslash escapes the next character and is dropped, so ``\:`` arrives as ``:`` and ``C:\VMs`` as
``C:VMs``.  So values need neither: a port follows ``#`` (``HV01=10.0.0.5#5985``), Windows paths take
``/`` and the drive as ``C$`` (``C$/ClusterStorage/Volume1``, ``//server/share``).  The old
spelling still works when it reaches the plugin as ``\:`` (written ``\\:`` in bareos-dir.conf or
bconsole); a value visibly cut at a ``:`` or stripped of its backslashes is refused with the
spelling to use.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

from bareos_hyperv.errors import ConfigurationError
from bareos_hyperv.model.backup import ConsistencyMode
from bareos_hyperv.model.options import (
    BackupOptions,
    ConnectionOptions,
    DataPlane,
    FilesOptions,
    JobOptions,
    SmbMover,
    SmbShareOptions,
    WinrmTransport,
    parse_endpoints,
    parse_path_map,
    parse_share_map,
    split_list,
    split_map,
    split_names,
)
from bareos_hyperv.protocol.messages import (
    DiskMapping,
    MissingSwitch,
    RestoreOptions,
    RestoreTarget,
    SwitchMapping,
    parse_pairs,
)

__all__ = ["OPTIONS", "SOURCES", "OptionSpec", "PluginOptions", "RawItem", "make_opt", "scan_definition",
           "split_definition"]

Value = Union[str, int, bool]

TRUE_WORDS = frozenset({"yes", "on", "true", "1"})
FALSE_WORDS = frozenset({"no", "off", "false", "0"})
SOURCES = ("hyperv", "files", "smb")
CONSISTENCY = tuple(c.value for c in ConsistencyMode)
TRANSPORTS = tuple(t.value for t in WinrmTransport)

# The defaults live in the typed options the agent receives (model/options.py, model/restore.py);
# the table below takes them from there, so a default is written in one place.
_CONNECTION = ConnectionOptions()
_BACKUP = BackupOptions()
_JOB = JobOptions()
_RESTORE = RestoreOptions()


# Value syntaxes of string options that hold endpoints or Windows paths (see the module docstring).
ENDPOINTS = "endpoints"  # NODE=address[#port],...
WINPATH = "winpath"  # one Windows path
SHARE_MAP = "share_map"  # [NODE/]prefix=//server/share;...
PATH_MAP = "path_map"  # [NODE/]prefix=/local/dir;...
DISK_MAP = "disk_map"  # DISK=FOLDER,...


@dataclass(frozen=True)
class OptionSpec:
    """One declared option."""

    kind: type
    default: Optional[Value] = None
    required_for: Tuple[str, ...] = ()
    choices: Tuple[str, ...] = ()
    help: str = ""
    syntax: str = ""  # one of ENDPOINTS, WINPATH, ...: normalised to the form the agent parses


def make_opt(kind: type, default: Optional[Value] = None, *, required_for: Tuple[str, ...] = (),
             choices: Tuple[str, ...] = (), help: str = "", syntax: str = "") -> OptionSpec:
    """Declare an option: ``kind`` is str, int or bool; ``required_for`` names the sources that need it."""
    return OptionSpec(kind, default, required_for, choices, help, syntax)


OPTIONS: Dict[str, OptionSpec] = {
    "source": make_opt(str, "hyperv", choices=SOURCES,
                       help="what to stream: hyperv (VMs), or files / smb for diagnostics"),
    # -- Hyper-V (source=hyperv) --
    "host": make_opt(str, required_for=("hyperv",), help="a Hyper-V host, a cluster node or the cluster name"),
    "vm": make_opt(str, required_for=("hyperv",),
                   help="VM names or GUIDs, comma-separated (\\, is a comma in a name); shell-style wildcards "
                        "allowed, an exact name wins"),
    "exclude_vm": make_opt(str, help="VM names, GUIDs or patterns to leave out"),
    "username": make_opt(str, help="account when credentials_file= is not used (password from the environment)"),
    "transport": make_opt(str, _CONNECTION.transport.value, choices=TRANSPORTS, help="WinRM authentication"),
    "https": make_opt(bool, _CONNECTION.https, help="WinRM over HTTPS (5986) instead of encrypted HTTP (5985)"),
    "port": make_opt(int, help="WinRM port"),
    "ca_trust_path": make_opt(str, help="CA bundle that signs the hosts' WinRM HTTPS certificates"),
    "cert_validation": make_opt(bool, _CONNECTION.cert_validation, help="verify WinRM HTTPS certificates"),
    "host_map": make_opt(str, help="NODE=address[#port],... WinRM endpoints when names do not resolve",
                         syntax=ENDPOINTS),
    "smb_host_map": make_opt(str, help="NODE=address[#port],... SMB endpoints when names do not resolve",
                             syntax=ENDPOINTS),
    "data": make_opt(str, _CONNECTION.data.value, choices=tuple(d.value for d in DataPlane),
                     help="read disks over SMB or from local mounts"),
    "share_map": make_opt(str, help="HOSTPATH=//server/share;... SMB shares for host paths", syntax=SHARE_MAP),
    "path_map": make_opt(str, help="HOSTPATH=/local/dir;... local mounts for host paths (data=local)",
                         syntax=PATH_MAP),
    "consistency": make_opt(str, _BACKUP.consistency.value, choices=CONSISTENCY,
                            help="application (crash fallback with a warning), application-required or crash"),
    "staging_path": make_opt(str, help="host folder for the configuration export (default: next to the VM)",
                             syntax=WINPATH),
    "timeout": make_opt(int, _JOB.timeout,
                        help="seconds a Hyper-V operation (checkpoint, export, waiting for a disk merge to end) "
                             "may take"),
    # No default here: unset, the agent's environment (BAREOS_HYPERV_SMB_MOVER) or smbprotocol decides.
    "smb_mover": make_opt(str, choices=tuple(m.value for m in SmbMover),
                          help="who streams whole disks over SMB: smbprotocol, or Samba's smbclient when installed"),
    "paths": make_opt(str, required_for=("files",), help="comma-separated absolute local paths"),
    "smb_server": make_opt(str, required_for=("smb",), help="SMB server name (e.g. a Hyper-V node)"),
    "smb_share": make_opt(str, required_for=("smb",), help="share name, e.g. C$"),
    "smb_paths": make_opt(str, required_for=("smb",), help="comma-separated paths inside the share"),
    "smb_address": make_opt(str, help="connect to this address instead of resolving smb_server"),
    "smb_port": make_opt(int, help="SMB port (default 445)"),
    "smb_encrypt": make_opt(bool, _CONNECTION.smb_encrypt, help="require SMB3 encryption"),
    # Not mandatory: without it the account comes from the fd's BAREOS_HYPERV_USERNAME/_PASSWORD.
    "credentials_file": make_opt(str, help="file with username=/password= lines (mode 600)"),
    "agent_python": make_opt(str, help="python3 that has bareos-hyperv installed"),
    "agent_timeout": make_opt(int, 300, help="seconds the agent may stay silent before the job fails"),
    "agent_debug": make_opt(bool, _JOB.debug, help="relay the agent's debug log to the fd debug output"),
    # -- restore (restore_* options matter only at restore; see RestoreOptions) --
    "restore_local": make_opt(bool, help="yes: files below where= (same as restore_to=directory); "
                                         "no: into Hyper-V (same as restore_to=hyperv)"),
    "restore_to": make_opt(str, choices=("hyperv", "directory"),
                           help="hyperv (default when where= is empty or /) or directory (default otherwise)"),
    "restore_host": make_opt(str, help="node, standalone host or cluster to restore to (default: where the VM was)"),
    "restore_node": make_opt(str, help="cluster node that owns the restored VM (default: the original owner)"),
    "restore_vm_name": make_opt(str, help="name of the restored VM (default: the backed-up name)"),
    "restore_new_id": make_opt(bool, help="yes: new VM ID (a copy); no: keep it (default: keep when free)"),
    "restore_overwrite": make_opt(bool, _RESTORE.overwrite, help="replace the existing VM with the same ID"),
    "restore_force_off": make_opt(bool, _RESTORE.force_off, help="turn the VM to be overwritten off if it runs"),
    "restore_storage": make_opt(str, help="one host folder or CSV for configuration and disks", syntax=WINPATH),
    "restore_disk_map": make_opt(str, help="DISK=FOLDER,... per disk (disk by file name, source path or slot)",
                                 syntax=DISK_MAP),
    "restore_switch_map": make_opt(str, help="OLD=NEW,... switch names at the destination"),
    "restore_missing_switch": make_opt(str, _RESTORE.missing_switch.value,
                                       choices=tuple(m.value for m in MissingSwitch),
                                       help="adapters whose switch the destination lacks: fail or disconnect"),
    "restore_dry_run": make_opt(bool, _RESTORE.dry_run, help="print the restore plan and change nothing"),
    "restore_start": make_opt(bool, _RESTORE.start, help="start the VM after the restore"),
    "restore_cluster_role": make_opt(bool, help="make the VM highly available (default: yes in a cluster)"),
    "restore_vm": make_opt(str, help="names or GUIDs of the VMs to restore from a multi-VM job (default: all)"),
}


def split_definition(plugindef: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Split ``k=v:k2=v2:`` like BareosFdPluginBaseclass: ``\\:`` keeps a colon in a value.

    Returns ``(items, warnings)``; items without a value are dropped with a warning.
    """
    items: List[Tuple[str, str]] = []
    warnings: List[str] = []
    parts = plugindef.split(":")
    while parts:
        raw_key, _, raw_val = parts.pop(0).partition("=")
        key, val = raw_key.strip(), raw_val.strip()
        while val.endswith("\\") and parts:
            val = val[:-1] + ":" + parts.pop(0)
        if not key:
            continue
        if not val:
            warnings.append(f"ignoring option '{key}' with no value")
            continue
        items.append((key, val))
    return items, warnings


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class RawItem:
    r"""One ``key=value`` item of a plugin definition, as written.

    ``tail`` holds what followed the value up to the next item: parts that cannot start an option
    (no ``=``, or a key that is not a name, such as ``5985,HV02=10.0.0.6`` or ``/VMs``).  They show that
    a ``:`` inside the value ended it: the director turned the ``\:`` it was written with into ``:``.
    """

    key: str
    value: str
    tail: List[str]

    @property
    def written(self) -> str:
        """The value as it was meant: the value and its tail joined by the ``:`` that cut them."""
        return ":".join([self.value, *self.tail])


def scan_definition(plugindef: str) -> List[RawItem]:
    r"""Split ``k=v:k2=v2:`` into items: ``\:`` keeps a colon in a value (as the Bareos base class);
    a part that cannot start an option goes to the previous item's :attr:`RawItem.tail`."""
    items: List[RawItem] = []
    parts = plugindef.split(":")
    while parts:
        part = parts.pop(0)
        while part.endswith("\\") and parts:
            part = part[:-1] + ":" + parts.pop(0)
        if not part.strip():
            continue
        raw_key, eq, raw_val = part.partition("=")
        if eq and _IDENTIFIER.match(raw_key.strip()):
            items.append(RawItem(raw_key.strip(), raw_val.strip(), []))
        elif items:
            items[-1].tail.append(part.strip())
        else:
            items.append(RawItem(raw_key.strip(), raw_val.strip(), []))
    return items


# -- value syntaxes ------------------------------------------------------------------------------

_DRIVE = re.compile(r"([A-Za-z])[:$](?:[\\/]|\Z)")
_DRIVE_ONLY = re.compile(r"[A-Za-z][:$]")
_MAP_NODE = re.compile(r"(?P<node>[A-Za-z0-9][A-Za-z0-9._-]+)[:/](?=[A-Za-z][:$]|[\\/]{2})")
_SLASHES = "\\/"


def _winpath(key: str, value: str) -> str:
    r"""``C$/a/b``, ``C:/a/b``, ``C:\a\b`` -> ``C:\a\b``; ``//srv/share/x`` -> ``\\srv\share\x``.

    A drive path whose separators are gone (``C:ClusterStorage``: the director dropped the
    backslashes) and a UNC path that lost one (``\srv\share``) are refused with the spelling to use.
    Anything else is left for the restore planner or the agent to judge.
    """
    text = value.strip()
    m = _DRIVE.match(text)
    if m:
        rest = text[2:].replace("/", "\\")
        return f"{m.group(1).upper()}:{rest if rest else chr(92)}"
    if _DRIVE_ONLY.match(text):
        raise ConfigurationError(
            f"option {key}={value} is not an absolute Windows path: no \\ or / follows the drive, so the "
            "backslashes were probably removed (a single \\ is dropped in bareos-dir.conf and in bconsole)",
            what_to_do=f"write the path with / and the drive as {text[0].upper()}$, e.g. "
                       f"{key}={text[0].upper()}$/ClusterStorage/Volume1")
    if text[:2] in ("//", "\\\\", "/\\", "\\/"):
        return "\\\\" + text[2:].replace("/", "\\")
    if text.startswith("\\"):
        raise ConfigurationError(
            f"option {key}={value} starts with a single backslash: a UNC path lost one of its two leading "
            "backslashes (a single \\ is dropped in bareos-dir.conf and in bconsole)",
            what_to_do=f"write the UNC path with forward slashes, e.g. {key}=//server/share/folder")
    return text


def _suggest_winpath(value: str) -> str:
    text = value.strip()
    if _DRIVE.match(text):
        return f"{text[0].upper()}$" + text[2:].replace("\\", "/")
    if text[:2] in ("\\\\", "//"):
        return "//" + text[2:].replace("\\", "/")
    return text.replace("\\", "/")


def _split_entries(value: str, sep: str) -> List[str]:
    return [e.strip() for e in value.split(sep) if e.strip()]


def _endpoints(key: str, value: str) -> str:
    """``NODE=address#port,...`` (or ``address:port`` from ``\\:``) -> ``NODE=address:port,...``."""
    out: List[str] = []
    for entry in _split_entries(value, ","):
        node, eq, target = entry.partition("=")
        target = target.strip()
        if not eq or not node.strip() or not target:
            raise ConfigurationError(
                f"option {key}: entry '{entry}' is not NODE=address or NODE=address#port",
                what_to_do=f"write {key}=NODE=address#port,NODE2=address2#port (a port after #)")
        address, sep, port = target.rpartition("#") if "#" in target else target.rpartition(":")
        if not sep:
            address, port = target, ""
        elif not port.isdigit() or not 0 < int(port) < 65536 or not address.strip():
            raise ConfigurationError(
                f"option {key}: entry '{entry}' has no address or an invalid port '{port}'",
                what_to_do=f"write {key}=NODE=address#port with a TCP port between 1 and 65535 after #")
        out.append(f"{node.strip()}={address.strip()}" + (f":{port}" if port else ""))
    return ",".join(out)


def _suggest_endpoints(value: str) -> str:
    out = []
    for entry in _split_entries(value, ","):
        node, eq, target = entry.partition("=")
        address, sep, port = target.rpartition(":")
        out.append(f"{node}{eq}{address}#{port}" if sep and port.isdigit() else entry)
    return ",".join(out)


def _host_map_entries(key: str, value: str, target_is_windows: bool) -> str:
    r"""``[NODE/]prefix=target;...`` (``NODE:`` from ``\:`` too) -> ``[NODE:]C:\prefix=target;...``."""
    out: List[str] = []
    for raw in _split_entries(value, ";"):
        node, entry = "", raw
        m = _MAP_NODE.match(raw)
        if m:
            node, entry = m.group("node") + ":", raw[m.end():]
        prefix, eq, target = entry.partition("=")
        if eq:
            prefix = _winpath(key, prefix)
            target = _winpath(key, target) if target_is_windows else target.strip()
        out.append(f"{node}{prefix}{eq}{target}")
    return ";".join(out)


def _suggest_host_map_entries(value: str) -> str:
    out = []
    for raw in _split_entries(value, ";"):
        node, entry = "", raw
        m = _MAP_NODE.match(raw)
        if m:
            node, entry = m.group("node") + "/", raw[m.end():]
        prefix, eq, target = entry.partition("=")
        target = _suggest_winpath(target) if target.strip()[:2] in ("\\\\", "//") else target
        out.append(f"{node}{_suggest_winpath(prefix)}{eq}{target}")
    return ";".join(out)


def _looks_like_path(text: str) -> bool:
    t = text.strip()
    return bool(_DRIVE_ONLY.match(t)) or t[:1] in _SLASHES


def _disk_map(key: str, value: str) -> str:
    """``DISK=FOLDER,...``: paths among them as for :func:`_winpath`; disk names and slots unchanged."""
    out: List[str] = []
    for entry in _split_entries(value, ","):
        disk, eq, folder = entry.partition("=")
        if _looks_like_path(disk):
            disk = _winpath(key, disk)
        if eq and _looks_like_path(folder):
            folder = _winpath(key, folder)
        out.append(f"{disk.strip()}{eq}{folder.strip()}")
    return ",".join(out)


def _suggest_disk_map(value: str) -> str:
    out = []
    for entry in _split_entries(value, ","):
        disk, eq, folder = entry.partition("=")
        disk = _suggest_winpath(disk) if _looks_like_path(disk) else disk
        out.append(f"{disk}{eq}{_suggest_winpath(folder) if _looks_like_path(folder) else folder}")
    return ",".join(out)


NORMALIZERS: Dict[str, Callable[[str, str], str]] = {
    ENDPOINTS: _endpoints,
    WINPATH: _winpath,
    SHARE_MAP: lambda key, value: _host_map_entries(key, value, True),
    PATH_MAP: lambda key, value: _host_map_entries(key, value, False),
    DISK_MAP: _disk_map,
}
# After normalisation, the syntaxes the agent receives typed are parsed by the model's parsers, so
# that a value the agent could not use is refused here, with the other problems of the definition.
TYPE_CHECKS: Dict[str, Callable[[str, str], object]] = {
    ENDPOINTS: lambda key, value: parse_endpoints(value, key),
    SHARE_MAP: lambda key, value: parse_share_map(split_map(value)),
    PATH_MAP: lambda key, value: parse_path_map(split_map(value)),
}
SUGGESTERS: Dict[str, Callable[[str], str]] = {
    ENDPOINTS: _suggest_endpoints,
    WINPATH: _suggest_winpath,
    SHARE_MAP: _suggest_host_map_entries,
    PATH_MAP: _suggest_host_map_entries,
    DISK_MAP: _suggest_disk_map,
}


class PluginOptions:
    """The job's options: typed, validated, first value wins."""

    def __init__(self, specs: Optional[Dict[str, OptionSpec]] = None) -> None:
        self.specs = specs if specs is not None else OPTIONS
        self._values: Dict[str, Value] = {}
        # Problems found while definitions were parsed, reported together by check()/restore_options().
        self.problems: List[ConfigurationError] = []
        self._problem_texts: Dict[str, str] = {}  # str(problem) -> option it is about

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def _convert(self, key: str, raw: str) -> Value:
        spec = self.specs[key]
        if spec.kind is bool:
            word = raw.lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise ConfigurationError(f"option {key}={raw} is not a yes/no value",
                                     what_to_do=f"write {key}=yes or {key}=no")
        if spec.kind is int:
            try:
                return int(raw, 10)
            except ValueError:
                raise ConfigurationError(f"option {key}={raw} is not a whole number",
                                         what_to_do=f"write {key}= followed by digits only") from None
        if spec.choices and raw not in spec.choices:
            raise ConfigurationError(f"option {key}={raw} is not one of {', '.join(spec.choices)}",
                                     what_to_do=f"set {key} to one of {', '.join(spec.choices)}")
        if spec.syntax:
            value = NORMALIZERS[spec.syntax](key, raw)
            check = TYPE_CHECKS.get(spec.syntax)
            if check is not None:
                try:
                    check(key, value)
                except ConfigurationError as exc:
                    named = exc.message if exc.message.startswith(key) else f"option {key}: {exc.message}"
                    raise ConfigurationError(named, what_to_do=exc.what_to_do, context=exc.context) from None
            return value
        return raw

    def _unknown(self, key: str) -> ConfigurationError:
        close = difflib.get_close_matches(key, list(self.specs), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return ConfigurationError(
            f"unknown option '{key}' in the plugin definition",
            what_to_do=f"{hint}remove it or correct its spelling; known options: {', '.join(sorted(self.specs))}")

    def add(self, key: str, raw: str) -> None:
        """Set ``key`` unless it is already set; unknown keys and bad values raise ConfigurationError."""
        if key not in self.specs:
            raise self._unknown(key)
        if key in self._values:
            return
        self._values[key] = self._convert(key, raw)

    def _cut(self, item: RawItem) -> ConfigurationError:
        """A value followed by text that is no option: a ':' inside it ended it."""
        rest = ":".join(item.tail)
        message = (f"'{rest}' after {item.key}={item.value} is not an option (key=value): the value "
                   f"{item.written} was cut at a ':' (':' separates options; bareos-dir.conf and bconsole "
                   "turn \\: into ':')")
        syntax = self.specs[item.key].syntax
        if not syntax:
            return ConfigurationError(message, what_to_do=(
                f"if ':{rest}' belongs to the value of {item.key}, write that ':' as \\\\: in bareos-dir.conf "
                "or bconsole (the plugin then receives \\:); otherwise remove it"))
        try:
            NORMALIZERS[syntax](item.key, item.written)
        except ConfigurationError as exc:  # cut, and mangled besides (backslashes gone)
            return ConfigurationError(f"{message}; {exc.message}", what_to_do=exc.what_to_do)
        return ConfigurationError(message, what_to_do=(
            f"write {item.key}={SUGGESTERS[syntax](item.written)} (no ':' and no '\\' needed; see "
            "'Writing option values' in the README)"))

    def _remember(self, key: str, problem: ConfigurationError) -> None:
        text = str(problem)
        if text not in self._problem_texts:
            self._problem_texts[text] = key
            self.problems.append(problem)

    def collect_definition(self, plugindef: str) -> List[str]:
        """Add every item of a plugin definition; returns warnings and remembers problems (never raises).

        Unknown options, bad values and values cut at a ``:`` become :attr:`problems`; a key with a
        problem is taken, so a later value of it does not quietly replace the refused one.
        """
        warnings: List[str] = []
        for item in scan_definition(plugindef):
            if item.key not in self.specs:
                if item.key:  # an empty key is ignored, as by the Bareos base class
                    self._remember(item.key, self._unknown(item.key))
                continue
            if item.key in self._values or item.key in self._problem_texts.values():
                continue  # the first value wins, a refused one too
            if item.tail:
                self._remember(item.key, self._cut(item))
            elif not item.value:
                warnings.append(f"ignoring option '{item.key}' with no value")
            else:
                try:
                    self.add(item.key, item.value)
                except ConfigurationError as exc:
                    self._remember(item.key, exc)
        return warnings

    def add_definition(self, plugindef: str) -> List[str]:
        """Add every item of a plugin definition; returns warnings, raises the problems it found."""
        before = len(self.problems)
        warnings = self.collect_definition(plugindef)
        if len(self.problems) > before:
            raise self._combined(self.problems[before:])
        return warnings

    @staticmethod
    def _combined(problems: List[ConfigurationError]) -> ConfigurationError:
        if len(problems) == 1:
            return problems[0]
        listed = "; ".join(f"({n}) {p}" for n, p in enumerate(problems, 1))
        return ConfigurationError(f"the plugin definition has {len(problems)} problems: {listed}",
                                  what_to_do="correct them in the FileSet's Plugin= line or the restore's "
                                             "pluginoptions (nothing was changed)")

    def missing(self) -> List[str]:
        """Mandatory options not set, for the configured source (all of them)."""
        source = self.get("source")
        out = []
        for key, spec in self.specs.items():
            if key in self._values or spec.default is not None or not spec.required_for:
                continue
            if source is None or source in spec.required_for:
                out.append(key)
        return out

    def check(self) -> None:
        """Raise one ConfigurationError naming every problem found and every missing mandatory option."""
        problems = list(self.problems)
        # With source= itself refused, which options are mandatory is unknown: do not guess.
        missing = [] if "source" in self._problem_texts.values() else self.missing()
        if missing:
            names = ", ".join(missing)
            problems.append(ConfigurationError(
                f"mandatory option{'s' if len(missing) > 1 else ''} {names} not set in the plugin definition",
                what_to_do=f"add {' and '.join(f'{k}=...' for k in missing)} to the Plugin= line"))
        if problems:
            raise self._combined(problems)

    # -- typed access --------------------------------------------------------------------------

    def get(self, key: str) -> Optional[Value]:
        """The value of ``key`` (its default when not set)."""
        if key in self._values:
            return self._values[key]
        return self.specs[key].default

    def get_str(self, key: str) -> Optional[str]:
        """A string option, None when neither set nor defaulted."""
        value = self.get(key)
        return None if value is None else str(value)

    def get_int(self, key: str) -> int:
        """An int option that has a default."""
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigurationError(f"option {key} is not set", what_to_do=f"set {key}=<number>")
        return value

    def get_bool(self, key: str) -> bool:
        """A bool option that has a default."""
        return bool(self.get(key))

    @property
    def source(self) -> str:
        """The configured source (check() makes sure it is set)."""
        return str(self.get("source"))

    def _list(self, key: str) -> Tuple[str, ...]:
        return split_list(self.get_str(key) or "")

    def _optional_int(self, key: str) -> Optional[int]:
        value = self.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def connection_options(self) -> ConnectionOptions:
        """How the agent reaches the hosts and their files, typed (values were checked when added)."""
        mover = self.get_str("smb_mover")
        return ConnectionOptions(
            transport=WinrmTransport(self.get_str("transport")),
            https=self.get_bool("https"),
            port=self._optional_int("port"),
            ca_trust_path=self.get_str("ca_trust_path"),
            cert_validation=self.get_bool("cert_validation"),
            host_map=parse_endpoints(self.get_str("host_map") or "", "host_map"),
            data=DataPlane(self.get_str("data")),
            share_map=tuple(parse_share_map(split_map(self.get_str("share_map") or ""))),
            path_map=tuple(parse_path_map(split_map(self.get_str("path_map") or ""))),
            smb_host_map=parse_endpoints(self.get_str("smb_host_map") or "", "smb_host_map"),
            smb_encrypt=self.get_bool("smb_encrypt"),
            smb_mover=SmbMover(mover) if mover is not None else None,
        )

    def backup_options(self) -> BackupOptions:
        """What the Hyper-V backup backs up (``source=hyperv``), typed."""
        return BackupOptions(
            host=self.get_str("host") or "",
            vms=split_names(self.get_str("vm") or ""),
            exclude=split_names(self.get_str("exclude_vm") or ""),
            consistency=ConsistencyMode(self.get_str("consistency")),
            staging_path=self.get_str("staging_path"),
        )

    def job_options(self) -> JobOptions:
        """Everything the agent needs (``StartJob.options``), typed once; the problems found first.

        Only the part of the configured source is filled in; fd-only options (``agent_python``,
        ``agent_timeout``, ``username``) and the ``restore_*`` options (see :meth:`restore_options`)
        are not part of it.
        """
        if self.problems:
            raise self._combined(list(self.problems))
        source = self.source
        smb_port = self._optional_int("smb_port")
        return JobOptions(
            connection=self.connection_options(),
            backup=self.backup_options() if source == "hyperv" else None,
            files=FilesOptions(paths=self._list("paths")) if source == "files" else None,
            # Paths inside the share: Windows separators, relative to the share's root.
            smb=SmbShareOptions(server=self.get_str("smb_server") or "", share=self.get_str("smb_share") or "",
                                paths=tuple(p.replace("/", "\\").strip("\\") for p in self._list("smb_paths")),
                                address=self.get_str("smb_address"), port=smb_port) if source == "smb" else None,
            timeout=self.get_int("timeout"),
            credentials_file=self.get_str("credentials_file"),
            debug=self.get_bool("agent_debug"),
        )

    def restore_target(self, where: str) -> RestoreTarget:
        """Hyper-V when where= is empty or ``/`` unless restore_to/restore_local say otherwise."""
        to = self.get_str("restore_to")
        if to is not None:
            return RestoreTarget(to)
        local = self.get("restore_local")
        if isinstance(local, bool):
            return RestoreTarget.DIRECTORY if local else RestoreTarget.HYPERV
        return RestoreTarget.HYPERV if where.strip() in ("", "/") else RestoreTarget.DIRECTORY

    def restore_options(self, where: str) -> RestoreOptions:
        """The typed restore options; every bad value or contradiction in one ConfigurationError."""
        if self.problems:
            raise self._combined(list(self.problems))
        problems: List[str] = []
        target = self.restore_target(where)
        to, local = self.get_str("restore_to"), self.get("restore_local")
        if to is not None and isinstance(local, bool) and (to == "directory") != local:
            problems.append(f"restore_to={to} contradicts restore_local={'yes' if local else 'no'}")
        if target is RestoreTarget.HYPERV and self.source != "hyperv":
            problems.append(f"restore into Hyper-V needs source=hyperv, this job has source={self.source}")
        pairs, bad = parse_pairs(self.get_str("restore_disk_map") or "", "restore_disk_map")
        problems.extend(bad)
        disk_map = [DiskMapping(a, b) for a, b in pairs]
        pairs, bad = parse_pairs(self.get_str("restore_switch_map") or "", "restore_switch_map")
        problems.extend(bad)
        switch_map = [SwitchMapping(a, b) for a, b in pairs]
        seen = set()
        for m in switch_map:
            if m.source.casefold() in seen:
                problems.append(f"restore_switch_map names the switch '{m.source}' twice")
            seen.add(m.source.casefold())
        new_id = self.get("restore_new_id")
        overwrite = self.get_bool("restore_overwrite")
        if overwrite and new_id is True:
            problems.append("restore_overwrite=yes replaces the VM with the same ID and contradicts restore_new_id=yes")
        if self.get_bool("restore_force_off") and not overwrite:
            problems.append("restore_force_off=yes only applies with restore_overwrite=yes")
        if self.get_bool("restore_start") and self.get_bool("restore_dry_run"):
            problems.append("restore_start=yes contradicts restore_dry_run=yes")
        name = self.get_str("restore_vm_name")
        if name is not None and (len(name) > 100 or any(not ch.isprintable() for ch in name)):
            problems.append("restore_vm_name must be at most 100 printable characters")
        if problems:
            raise ConfigurationError(
                "restore options refused: " + "; ".join(problems),
                what_to_do="correct the restore_* values in the restore's pluginoptions (nothing was written)")
        cluster_role = self.get("restore_cluster_role")
        return RestoreOptions(
            target=target, host=self.get_str("restore_host"), vm_name=name,
            new_id=new_id if isinstance(new_id, bool) else None, overwrite=overwrite,
            force_off=self.get_bool("restore_force_off"), storage=self.get_str("restore_storage"),
            disk_map=disk_map, switch_map=switch_map,
            missing_switch=MissingSwitch(self.get_str("restore_missing_switch") or _RESTORE.missing_switch.value),
            dry_run=self.get_bool("restore_dry_run"), start=self.get_bool("restore_start"),
            cluster_role=cluster_role if isinstance(cluster_role, bool) else None,
            node=self.get_str("restore_node"),
            vms=[v.strip() for v in (self.get_str("restore_vm") or "").split(",") if v.strip()])
