"""Hyper-V's management services of one host, located once per client.

Service keys (``CreationClassName``, ``Name``, ``SystemCreationClassName``,
``SystemName``) are taken from enumerated EPRs, never hard-coded (``hyperv-wmi.md`` §1.7).
"""

from __future__ import annotations

from bareos_hyperv.errors import HyperVError
from bareos_hyperv.hyperv import constants as C
from bareos_hyperv.hyperv.paths import object_path
from bareos_hyperv.wsman.cim import EndpointReference
from bareos_hyperv.wsman.client import CimClient


class HostServices:
    """EPRs of the services used for backup and restore on one host (looked up lazily, cached)."""

    def __init__(self, client: CimClient, node: str) -> None:
        self.client = client
        self.node = node.upper()
        self._cache: dict[str, EndpointReference] = {}

    def _service(self, class_name: str) -> EndpointReference:
        if class_name not in self._cache:
            found = self.client.enumerate(C.NS_VIRT, class_name)
            if not found or found[0].epr is None:
                raise HyperVError(
                    f"the host has no {class_name}",
                    context={"host": self.node},
                    what_to_do="check that the Hyper-V role is installed and that the account may use "
                    "root\\virtualization\\v2 (Hyper-V Administrators or local Administrators); "
                    "reference points need Windows Server 2016 or later",
                )
            epr = found[0].epr
            self._cache[class_name] = epr
        return self._cache[class_name]

    @property
    def management(self) -> EndpointReference:
        """``Msvm_VirtualSystemManagementService``."""
        return self._service(C.VSMS)

    @property
    def snapshots(self) -> EndpointReference:
        """``Msvm_VirtualSystemSnapshotService``."""
        return self._service(C.SNAPSHOT_SERVICE)

    @property
    def images(self) -> EndpointReference:
        """``Msvm_ImageManagementService`` (``vhdsvc``)."""
        return self._service(C.IMAGE_SERVICE)

    @property
    def reference_points(self) -> EndpointReference:
        """``Msvm_VirtualSystemReferencePointService``."""
        return self._service(C.REFERENCE_POINT_SERVICE)

    @property
    def computer_name(self) -> str:
        """The host's own computer name, as Hyper-V names it in its services' keys (``SystemName``).

        The name the job connects to may be an address, an FQDN or a host-map alias; an object
        path handed back to Hyper-V must name the machine as WMI does (``__SERVER``), as the paths
        Hyper-V itself returns do.
        """
        name = self.management.selector("SystemName")
        return name if isinstance(name, str) and name else self.node

    def path_of(self, epr: EndpointReference) -> str:
        """WMI object path string of an instance on this host (for string-typed path properties)."""
        return object_path(self.computer_name, epr)
