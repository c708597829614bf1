"""restore layer: plan a Hyper-V restore from a manifest and the destination's live facts; see docs/architecture.md."""
