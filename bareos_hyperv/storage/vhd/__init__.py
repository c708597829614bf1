"""storage/vhd layer; see docs/architecture.md."""
