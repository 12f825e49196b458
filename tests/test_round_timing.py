"""The run summary's round timing: each round's wall time and its compute floor from the sites' reports."""

from __future__ import annotations

from rich.console import Console

from server.evaluation import SiteEvaluation
from server.recorder import RunRecorder, SiteTraining


def test_round_wall_times_tile_the_run_and_the_floor_is_the_slowest_site_per_phase() -> None:
    recorder = RunRecorder(2, console=Console(quiet=True))
    with recorder.live():
        for number in (1, 2):
            recorder.trained(number, [SiteTraining("a", 10, 1.0, 1e-5, 1.0, compute_s=2.5),
                                      SiteTraining("b", 10, 1.0, 1e-5, 1.0, compute_s=4.0)], failed={})
            recorder.evaluated(number, [SiteEvaluation("a", 0.7, 0.5, 5, compute_s=0.7),
                                        SiteEvaluation("b", 0.6, 0.5, 5, compute_s=0.2)], failed={})
    walls = recorder.wall_seconds()
    assert set(walls) == {1, 2} and all(w >= 0 for w in walls.values())
    assert recorder.started is not None and recorder.rounds[2].ended is not None
    assert abs(sum(walls.values()) - (recorder.rounds[2].ended - recorder.started)) < 1e-9
    # each phase waits for its slowest site: 4.0 s of training (b) + 0.7 s of scoring (a)
    assert recorder.rounds[1].slowest_compute_s == 4.7
