"""Facts about a Hyper-V host (a standalone server or one cluster node)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Switch:
    """A virtual switch; ``name`` (ElementName) is what matches across hosts, ``guid`` differs per host."""

    name: str
    guid: str


@dataclass
class HostFacts:
    """What restore planning and the inventory need to know about one host."""

    name: str
    os_version: str
    supported_config_versions: list[str] = field(default_factory=list)
    default_vhd_path: str = ""
    default_vm_path: str = ""
    switches: list[Switch] = field(default_factory=list)

    def switch_named(self, name: str) -> Switch | None:
        """The switch with this friendly name (case-insensitive), if the host has one."""
        low = name.lower()
        return next((s for s in self.switches if s.name.lower() == low), None)
