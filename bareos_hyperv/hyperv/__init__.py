"""hyperv layer; see docs/architecture.md."""
