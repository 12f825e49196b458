"""How many virtual sites Flower's Ray backend runs at once (launcher/simulation.py)."""

from __future__ import annotations

from launcher.simulation import backend_config, concurrent_sites


def test_a_small_federation_trains_all_at_once_and_larger_ones_at_most_twice_the_cores() -> None:
    assert concurrent_sites(3, 1, cores=2) == 3    # the demo on 2 cores: one wave, not two
    assert concurrent_sites(10, 1, cores=2) == 4   # at most 2x oversubscribed
    assert concurrent_sites(3, 2, cores=2) == 2    # a site that asks for both cores
    assert concurrent_sites(2, 1, cores=16) == 2
    assert concurrent_sites(1, 4, cores=2) == 1


def test_ray_is_given_cpus_for_them_and_never_fewer_than_the_machine_has() -> None:
    init = backend_config(3, 1, 0.0)["init_args"]
    assert isinstance(init["num_cpus"], int) and init["num_cpus"] >= 3
