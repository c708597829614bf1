"""What the commands share: connection flags, credentials, connections, and advice in CLI terms.

The product's errors carry a ``what_to_do`` written for the plugin (``set credentials_file= in the
plugin options``).  A command-line user has flags instead: :func:`cli_advice` rewrites those hints,
naming the flag that does the same (``--credentials-file``).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Mapping, Optional

from bareos_hyperv.agent.connections import Connections, make_connector
from bareos_hyperv.agent.connections import connect as connect_with
from bareos_hyperv.errors import BareosHyperVError
from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.model.credentials import ENV_PASSWORD, ENV_USERNAME, Credentials
from bareos_hyperv.model.options import (
    ConnectionOptions,
    DataPlane,
    WinrmTransport,
    parse_endpoints,
    parse_path_map,
    parse_share_map,
    split_map,
)

__all__ = ["Connections", "add_connection_args", "add_data_args", "cli_advice", "connect", "connection_options",
           "connector", "credentials", "format_error"]

# The plugin's defaults (model/options.py), so the flags default to what a job does.
_DEFAULTS = ConnectionOptions()

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
    g.add_argument("--transport", default=_DEFAULTS.transport.value, choices=[t.value for t in WinrmTransport],
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
    g.add_argument("--data", default=_DEFAULTS.data.value, choices=[d.value for d in DataPlane],
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


def connection_options(args: argparse.Namespace) -> ConnectionOptions:
    """The typed connection options the flags describe (the same object a job's agent receives).

    The data flags (``--data``, maps) are optional: commands without them use the plugin's defaults.
    """
    data = getattr(args, "data", _DEFAULTS.data.value)
    return ConnectionOptions(
        transport=WinrmTransport(args.transport),
        https=args.https,
        port=args.port,
        ca_trust_path=args.ca_trust_path,
        cert_validation=not args.no_cert_validation,
        host_map=parse_endpoints(args.host_map, "host_map"),
        data=DataPlane(data),
        share_map=tuple(parse_share_map(split_map(getattr(args, "share_map", "")))),
        path_map=tuple(parse_path_map(split_map(getattr(args, "path_map", "")))),
        smb_host_map=parse_endpoints(getattr(args, "smb_host_map", ""), "smb_host_map"),
        operation_timeout=args.timeout,
    )


def connector(args: argparse.Namespace, creds: Optional[Credentials] = None) -> Connector:
    """The WinRM connector the flags describe (nothing is contacted yet)."""
    return make_connector(connection_options(args), creds or credentials(args))


def connect(args: argparse.Namespace) -> Connections:
    """WinRM and data connections from the flags (nothing is contacted yet)."""
    return connect_with(connection_options(args), credentials(args))
