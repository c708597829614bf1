"""backup orchestration: one VM at a time (checkpoint, export, disks); see docs/architecture.md."""
