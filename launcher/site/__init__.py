"""A hospital's node: `site init` (its key, made here), the supervisor of SuperNode + gated runner, diagnosis."""
