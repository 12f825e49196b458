"""The networks (Opacus-compatible by construction) and weight exchange."""
