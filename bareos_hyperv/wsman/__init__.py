"""wsman layer; see docs/architecture.md."""
