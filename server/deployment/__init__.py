"""The deployed coordinator's own files: its certificates and coordinator.toml."""
