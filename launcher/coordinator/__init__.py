"""The central team's coordinator: folder, certificates on disk, SuperLink + fence supervisor, site keys, run submission."""
