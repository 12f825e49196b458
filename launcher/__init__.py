"""The `fedclinic` command: synthetic hospitals, simulated runs and the demo."""
