"""``python3 -m bareos_hyperv.agent --fd N``: the per-job worker process the fd plugin starts.

The fd passes one end of a Unix socket pair as descriptor ``N`` and speaks the protocol of
:mod:`bareos_hyperv.protocol` on it.  Nothing secret is ever on this command line or in the
environment: credentials arrive over the socket or are read from the credentials file.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import List, Optional

from bareos_hyperv.agent.server import AgentServer
from bareos_hyperv.protocol.framing import Channel
from bareos_hyperv.storage.malloc import tune_malloc_for_bulk_io


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one job on the inherited socket; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python3 -m bareos_hyperv.agent",
                                     description="bareos-hyperv agent (started by the Bareos fd plugin)")
    parser.add_argument("--fd", type=int, required=True, help="descriptor of the socket to the fd plugin")
    args = parser.parse_args(argv)
    try:
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        print(f"bareos-hyperv agent: descriptor {args.fd} is not a socket: {exc}", file=sys.stderr)
        return 2
    # Large SMB buffers: keep them on the heap (performance-notes finding 2); safe in this process only.
    tune_malloc_for_bulk_io()
    return AgentServer(Channel(sock)).serve()


if __name__ == "__main__":
    sys.exit(main())
