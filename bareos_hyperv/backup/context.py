"""What a producer may ask of the job it runs in (implemented by the agent's session)."""

from __future__ import annotations

from typing import List, Protocol

from bareos_hyperv.hyperv.connection import Connector
from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.model.options import JobOptions
from bareos_hyperv.protocol.messages import RestoreObject
from bareos_hyperv.storage.base import Storage
from bareos_hyperv.storage.locations import LocationResolver

__all__ = ["JobConnections", "SourceContext"]


class JobConnections(Protocol):
    """WinRM clients per node, the data plane and the path resolver (``agent.connections.Connections``)."""

    connector: Connector
    storage: Storage
    resolver: LocationResolver

    def close(self) -> None:
        """Disconnect both planes (idempotent)."""


class SourceContext(Protocol):
    """What a source may ask of the job: its options, (lazily) its credentials and connections."""

    @property
    def options(self) -> JobOptions:
        """The job's options, typed by the fd."""

    def credentials(self) -> Credentials:
        """The account for remote sources; raises ConfigurationError when none was given."""

    def connections(self) -> JobConnections:
        """New connections to the hosts and their files as ``options.connection`` describes them.

        Nothing is contacted yet; the caller owns them and closes them.
        """

    @property
    def job_id(self) -> int:
        """The Bareos JobId of this job."""

    @property
    def level(self) -> str:
        """The Bareos level letter (``F``, ``I``, ``D``); empty for jobs that are not backups."""

    @property
    def since(self) -> int:
        """Bareos's since time (epoch seconds) of an Incremental or Differential, 0 otherwise."""

    @property
    def base_objects(self) -> List[RestoreObject]:
        """Restore objects of the job an Incremental or Differential builds on (reference §12)."""

    def heartbeat(self) -> None:
        """Tell the fd the job is alive during a long step (planning a VM's disks); rate-limited."""
