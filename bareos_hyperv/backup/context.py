"""What a producer may ask of the job it runs in (implemented by the agent's session)."""

from __future__ import annotations

from typing import List, Mapping, Protocol

from bareos_hyperv.model.credentials import Credentials
from bareos_hyperv.protocol.messages import RestoreObject

__all__ = ["SourceContext"]


class SourceContext(Protocol):
    """What a source may ask of the job: its options and (lazily) its credentials."""

    @property
    def options(self) -> Mapping[str, str]:
        """The job's options as the fd validated them (strings)."""

    def credentials(self) -> Credentials:
        """The account for remote sources; raises ConfigurationError when none was given."""

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
