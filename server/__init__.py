"""The coordinator: strategy, rounds, checkpoints, evaluation aggregation, reports."""
