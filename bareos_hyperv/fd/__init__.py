"""fd layer; see docs/architecture.md."""
