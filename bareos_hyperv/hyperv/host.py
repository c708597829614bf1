"""Facts about one Hyper-V host: OS build, configuration versions it runs, switches, default paths."""

from __future__ import annotations

import re
from typing import Optional

from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.model.host import HostFacts, Switch
from bareos_hyperv.wsman.client import CimClient

# Microsoft's "supported VM configuration versions" table (hyperv-wmi.md §10.1), by host build.
# Each row: (minimum build, versions the host can run).  2022 and 2025 dropped 5.0-7.1.
_VERSIONS_BY_BUILD: tuple[tuple[int, tuple[str, ...]], ...] = (
    (26100, ("8.0", "9.0", "9.1", "9.2", "9.3", "10.0", "11.0", "12.0")),
    (20348, ("8.0", "9.0", "9.1", "9.2", "9.3", "10.0")),
    (17763, ("5.0", "6.2", "7.0", "7.1", "8.0", "8.1", "8.2", "8.3", "9.0")),
    (14393, ("5.0", "6.2", "7.0", "7.1", "8.0")),
    (9600, ("5.0",)),
    (9200, ("4.0",)),
)

_BUILD = re.compile(r"OS:\s*\d+\.\d+\.(\d+)")


def build_from_product_version(product_version: str) -> Optional[int]:
    """The Windows build from Identify's ``ProductVersion`` (``OS: 10.0.17763 SP: 0.0 Stack: 3.0``)."""
    m = _BUILD.search(product_version or "")
    return int(m.group(1)) if m else None


def supported_versions(build: Optional[int]) -> list[str]:
    """Configuration versions a host of this build can run (empty when the build is unknown)."""
    if build is None:
        return []
    for minimum, versions in _VERSIONS_BY_BUILD:
        if build >= minimum:
            return list(versions)
    return []


def list_switches(client: CimClient) -> list[Switch]:
    """The host's virtual switches (name and GUID; GUIDs differ between hosts)."""
    return [
        Switch(name=s.opt_str("ElementName") or "", guid=s.str("Name").upper())
        for s in client.query(C.NS_VIRT, f"SELECT * FROM {C.SWITCH}")
    ]


def host_facts(client: CimClient, *, name: Optional[str] = None) -> HostFacts:
    """Read the facts of the host the client talks to (three round trips)."""
    ident = client.identify()
    build = build_from_product_version(ident.product_version)
    defaults = client.query(C.NS_VIRT, f"SELECT * FROM {C.VSMS_SETTINGS}")
    vhd_path = vm_path = ""
    if defaults:
        vhd_path = defaults[0].opt_str("DefaultVirtualHardDiskPath") or ""
        vm_path = defaults[0].opt_str("DefaultExternalDataRoot") or ""
    os_version = ident.product_version.split("SP:")[0].replace("OS:", "").strip()
    return HostFacts(
        name=(name or client.host).upper(),
        os_version=os_version,
        supported_config_versions=supported_versions(build),
        default_vhd_path=vhd_path,
        default_vm_path=vm_path,
        switches=list_switches(client),
    )
