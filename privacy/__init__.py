"""Accounting, noise calibration, the site ledger and policy, secure aggregation glue."""
