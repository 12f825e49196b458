"""Hydra YAML groups and the typed schema they are parsed into."""
