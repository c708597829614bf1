"""manifest layer: the backup manifest (model, XSD, XML) and the save-set layout; see docs/architecture.md."""

from bareos_hyperv.manifest.document import (
    EXTENSION_NAMESPACE,
    NAMESPACE,
    SCHEMA_VERSION,
    Manifest,
    VmSettings,
    from_xml,
    to_xml,
)

__all__ = ["EXTENSION_NAMESPACE", "NAMESPACE", "SCHEMA_VERSION", "Manifest", "VmSettings", "from_xml", "to_xml"]
