"""What the commands share: connection flags, credentials, connections, and advice in CLI terms.

The product's errors carry a ``what_to_do`` written for the plugin (``set credentials_file= in the
plugin options``).  A command-line user has flags instead: :func:`cli_advice` rewrites those hints,
naming the flag that does the same (``--credentials-file``).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

from bareos_hyperv.errors import BareosHyperVError
from bareos_hyperv.hyperv.connection import Connector, parse_host_map
from bareos_hyperv.model.credentials import ENV_PASSWORD, ENV_USERNAME, Credentials
from bareos_hyperv.storage.base import Storage
from bareos_hyperv.storage.local import LocalStorage
from bareos_hyperv.storage.locations import LocationResolver, parse_path_map, parse_share_map
from bareos_hyperv.wsman.transport import TransportOptions

__all__ = ["Connections", "add_connection_args", "add_data_args", "cli_advice", "connect", "connector",
           "credentials", "format_error"]

# plugin option -> the flag that does the same here (restore_* options: see cli/plan.py).
OPTION_FLAGS = {
    "credentials_file": "--credentials-file",
    "host": "--host",
    "vm": "--vm",
    "transport": "--transport",
    "https": "--https",
    "port": "--port",
    "ca_trust_path": "--ca-trust-path",
    "cert_validation": "--no-cert-validation",
    "host_map": "--host-map",
    "smb_host_map": "--smb-host-map",
    "data": "--data",
    "share_map": "--share-map",
    "path_map": "--path-map",
    "staging_path": "--staging-path",
    "timeout": "--timeout",
    "restore_host": "--host",
    "restore_node": "--node",
    "restore_vm_name": "--vm-name",
    "restore_new_id": "--new-id",
    "restore_overwrite": "--overwrite",
    "restore_force_off": "--force-off",
    "restore_storage": "--storage",
    "restore_disk_map": "--disk-map",
    "restore_switch_map": "--switch-map",
    "restore_missing_switch": "--missing-switch",
    "restore_cluster_role": "--cluster-role",
    "restore_vm": "--vm",
}

_SPECIAL = {
    "set credentials_file= in the plugin options (file mode 600)":
        f"give --credentials-file FILE (a file with username= and password= lines, mode 600), or set "
        f"{ENV_USERNAME} (or --username) and {ENV_PASSWORD}",
    "check credentials_file= and that the file exists and is readable by the fd user":
        "check --credentials-file: the file must exist and be readable by you",
    "point credentials_file= at a regular file": "give --credentials-file a regular file",
}

_OPTION = re.compile(r"\b(" + "|".join(sorted(OPTION_FLAGS, key=len, reverse=True)) + r")=(\S*)")


def cli_advice(text: Optional[str]) -> Optional[str]:
    """A plugin-oriented hint in command-line terms (flags instead of plugin options)."""
    if not text:
        return text
    if text in _SPECIAL:
        return _SPECIAL[text]

    def flag(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        out = OPTION_FLAGS[name]
        if value in ("yes", "no") and name.startswith("restore_"):
            return out if value == "yes" else f"--no-{out[2:]}"
        return f"{out} {value}" if value else out

    text = _OPTION.sub(flag, text)
    return text.replace("in the plugin options", "on the command line").replace("plugin option", "flag")


def format_error(exc: BareosHyperVError) -> str:
    """The error as one line, its advice in CLI terms."""
    facts = ", ".join(f"{k}={v}" for k, v in exc.context.items() if v is not None and v != "")
    parts = [exc.message]
    if facts:
        parts.append(f"({facts})")
    advice = cli_advice(exc.what_to_do)
    if advice:
        parts.append(f"- {advice}")
    return " ".join(parts)


def add_connection_args(p: argparse.ArgumentParser, *, required: bool = True,
                        host_help: str = "a Hyper-V host, a cluster node or the cluster name (required)") -> None:
    """The flags that say how to reach the hosts (the plugin's connection options)."""
    g = p.add_argument_group("connection")
    g.add_argument("--host", required=required, metavar="HOST", help=host_help)
    g.add_argument("--credentials-file", metavar="FILE",
                   help="file with username= and password= lines, mode 0600 (default: the environment "
                        f"variables {ENV_USERNAME} and {ENV_PASSWORD})")
    g.add_argument("--username", metavar="USER",
                   help=f"user name (DOMAIN\\user or user@domain); the password comes from {ENV_PASSWORD}")
    g.add_argument("--transport", default="ntlm", choices=["ntlm", "kerberos", "credssp", "basic"],
                   help="WinRM authentication: ntlm (default, message encryption over HTTP), kerberos, "
                        "credssp, basic (HTTPS only)")
    g.add_argument("--https", action="store_true", help="use WinRM over HTTPS (port 5986) instead of encrypted HTTP")
    g.add_argument("--port", type=int, metavar="PORT", help="WinRM port (default 5985, or 5986 with --https)")
    g.add_argument("--ca-trust-path", metavar="FILE", help="CA bundle that signs the hosts' HTTPS certificates")
    g.add_argument("--no-cert-validation", action="store_true",
                   help="do not verify HTTPS certificates (unsafe; for a first test only)")
    g.add_argument("--host-map", default="", metavar="NODE=ADDR[:PORT],...",
                   help="WinRM endpoints of nodes whose names do not resolve (no \\: escaping on the command line)")
    g.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds one WS-Management operation may take (default 60)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The flags that say how to reach the hosts' files (the plugin's data options)."""
    g = p.add_argument_group("data (SMB)")
    g.add_argument("--smb-host-map", default="", metavar="NODE=ADDR[:PORT],...",
                   help="SMB endpoints of nodes whose names do not resolve (default port 445)")
    g.add_argument("--data", default="smb", choices=["smb", "local"],
                   help="reach the files over SMB admin shares (default) or local mounts (--path-map)")
    g.add_argument("--share-map", default="", metavar="PREFIX=\\\\SERVER\\SHARE[\\PATH];...",
                   help="host path prefixes served by other shares than the admin shares")
    g.add_argument("--path-map", default="", metavar="PREFIX=/MOUNT;...",
                   help="with --data local: host path prefixes and where they are mounted here")


def credentials(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None) -> Credentials:
    """From ``--credentials-file``, else from the environment (``--username`` overrides the user name)."""
    if args.credentials_file:
        return Credentials.from_file(args.credentials_file)
    env = dict(os.environ if environ is None else environ)
    if args.username:
        env[ENV_USERNAME] = args.username
    return Credentials.from_env(env)


def connector(args: argparse.Namespace, creds: Optional[Credentials] = None) -> Connector:
    """The WinRM connector the flags describe (nothing is contacted yet)."""
    options = TransportOptions(
        transport=args.transport,
        cert_validation=not args.no_cert_validation,
        ca_trust_path=args.ca_trust_path,
        operation_timeout=args.timeout,
    )
    return Connector(creds or credentials(args), options, https=args.https, port=args.port,
                     host_map=parse_host_map(args.host_map))


def _split(value: str) -> List[str]:
    return [p.strip() for p in value.split(";") if p.strip()]


@dataclass
class Connections:
    """WinRM, the files, and how host paths map onto them (what a job's agent has)."""

    connector: Connector
    storage: Storage
    resolver: LocationResolver

    def close(self) -> None:
        """Disconnect both planes."""
        try:
            self.storage.close()
        finally:
            self.connector.close()


def connect(args: argparse.Namespace) -> Connections:
    """WinRM and data connections from the flags (nothing is contacted yet)."""
    creds = credentials(args)
    local = args.data == "local"
    resolver = LocationResolver(parse_share_map(_split(args.share_map)), parse_path_map(_split(args.path_map)),
                                local=local)
    storage: Storage
    if local:
        storage = LocalStorage()
    else:
        from bareos_hyperv.storage.smb import SmbStorage  # smbprotocol only when used

        endpoints = {k: (a, p or 445) for k, (a, p) in parse_host_map(args.smb_host_map).items()}
        storage = SmbStorage.from_credentials(creds, endpoints=endpoints)
    return Connections(connector(args, creds), storage, resolver)
