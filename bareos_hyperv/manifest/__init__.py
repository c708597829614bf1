"""manifest layer; see docs/architecture.md."""
