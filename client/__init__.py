"""Everything that runs at a hospital: site data, local training, the Flower ClientApp adapter."""
