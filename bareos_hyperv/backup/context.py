"""What a producer may ask of the job it runs in (implemented by the agent's session)."""

from __future__ import annotations

from typing import Mapping, Protocol

from bareos_hyperv.model.credentials import Credentials

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
