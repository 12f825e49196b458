"""FedProx at the site: the proximal term mu (w - w_global) is added to the DP gradient after
per-sample clipping, noise and averaging, in every grad_sample_mode; the clipping, the noise and
the recorded steps are unchanged; mu is bounded by the release and by each site's limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import client.site_round
import privacy.dpsgd.engine as engine
from client.recipe import site_experiment
from client.site_data.loader import load_site
from client.site_data.errors import SiteDataError
from client.site_file import read_site_file
from client.trainer import split_dataset, train_dp
from configs.load import load_experiment, released_experiment
from configs.parse import ConfigError
from configs.schema import ExperimentConfig, SiteFileConfig, SiteLimits
from configs.validate import GRAD_SAMPLE_MODES, RELEASE_MAXIMA
from model.networks import build_model
from privacy.dpsgd.engine import DPSettings, PrivateTraining, make_private
from synth.hospitals import write_hospitals
from messages import SMALL_RUN, metrics, send
from site_yaml import set_sections

MODES = list(GRAD_SAMPLE_MODES)
LR, CLIP, SIGMA = 0.5, 0.1, 1.0


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g) * 3, (torch.arange(n) % 2).float()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))


def _private(mode: str, mu: float, *, sigma: float = SIGMA, batch: int = 8) -> tuple[nn.Module, PrivateTraining]:
    """Plain SGD (lr 0.5, no momentum); w_global = the weights at make_private; a seeded noise
    generator so that runs with different mu draw the same noise."""
    model = _net()
    x, y = _data()
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=LR),
                           DataLoader(TensorDataset(x, y), batch_size=batch),
                           settings=DPSettings(sigma, CLIP, "prv", mode), prior=[], proximal_mu=mu)
    private.optimizer.generator = torch.Generator().manual_seed(123)
    return model, private


@torch.no_grad()
def _shift(model: nn.Module, scale: float = 2.0) -> list[torch.Tensor]:
    """Move every weight away from w_global by a fixed vector (as local steps would); returns it."""
    g = torch.Generator().manual_seed(5)
    shifts = []
    for p in model.parameters():
        s = (torch.randn(p.shape, generator=g) * scale).to(p.dtype)
        p.add_(s)
        shifts.append(s)
    return shifts


def _flat(tensors: object) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _step(private: PrivateTraining, model: nn.Module, rows: slice) -> torch.Tensor:
    """One DP step on the rows of the fixed data; returns the parameter update (flat, float64)."""
    x, y = _data()
    before = _flat(model.parameters())
    private.step(x[rows], y[rows])
    return _flat(model.parameters()) - before


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", MODES)
def test_clipped_sum_is_the_same_with_and_without_the_proximal_term(mode: str) -> None:
    """(a) Same weights, batch and noise: the clipped per-sample sum before noise is identical for
    mu = 0 and mu = 1, and one sample alone contributes at most C, although mu ||w - w_global||
    is ~100 C: the term never passes through the clipping."""
    sums = {}
    for mu in (0.0, 1.0):
        model, private = _private(mode, mu)
        _shift(model)
        _step(private, model, slice(None))
        sums[mu] = _flat(p.summed_grad for p in private.optimizer.params)
        private.close()
    assert torch.equal(sums[0.0], sums[1.0]), mode
    assert float(sums[1.0].norm()) <= 8 * CLIP * (1 + 1e-5)
    for i in range(8):
        model, private = _private(mode, 1.0, sigma=0.0, batch=1)  # expected batch 1
        shift = _flat(_shift(model))             # w - w_global, mu = 1
        assert float(shift.norm()) > 100 * CLIP
        update = _step(private, model, slice(i, i + 1))
        clipped = _flat(p.summed_grad for p in private.optimizer.params)
        assert float(clipped.norm()) <= CLIP * (1 + 1e-5), (mode, i)
        # the applied update is the clipped gradient plus the whole (unclipped) proximal pull
        assert torch.allclose(update, -LR * (clipped + shift), rtol=1e-5, atol=1e-6), (mode, i)
        private.close()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [slice(None), slice(0, 0)], ids=["batch", "empty-batch"])
def test_update_differs_by_exactly_lr_mu_times_the_distance_to_global(mode: str, rows: slice) -> None:
    """(b) Plain SGD, identical noise: update(mu) - update(0) = -lr mu (w - w_global), also on an
    empty Poisson batch (the term is data-independent)."""
    mu = 0.3
    updates, shifts = {}, None
    for m in (0.0, mu):
        model, private = _private(mode, m)
        shifts = _flat(_shift(model))
        updates[m] = _step(private, model, rows)
        private.close()
    expected = -LR * mu * shifts
    assert torch.allclose(updates[mu] - updates[0.0], expected, rtol=1e-5, atol=1e-6), mode
    assert float(updates[0.0].norm()) > 0  # the noise was drawn in both runs


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", MODES)
def test_over_several_steps_the_pull_is_towards_the_received_weights(mode: str) -> None:
    """(b) Over 4 steps from w_global (step 1: w = w_global, no pull): at every step t a twin with
    mu = 0, started from the same w_t and noise state, moves by lr mu (w_t - w_global) more."""
    mu = 0.3
    model, private = _private(mode, mu)
    twin, twin_private = _private(mode, 0.0)
    start = _flat(model.parameters())
    for t in range(4):
        with torch.no_grad():
            for p, q in zip(twin.parameters(), model.parameters()):
                p.copy_(q)
        twin_private.optimizer.generator.set_state(private.optimizer.generator.get_state())
        w_t = _flat(model.parameters())
        update = _step(private, model, slice(None))
        twin_update = _step(twin_private, twin, slice(None))
        assert torch.allclose(update - twin_update, -LR * mu * (w_t - start), rtol=1e-5, atol=1e-6), (mode, t)
    assert float((_flat(model.parameters()) - start).norm()) > 0
    private.close()
    twin_private.close()


def test_mu_zero_attaches_nothing_and_a_bad_mu_is_refused() -> None:
    _, private = _private("bk", 0.0)
    assert private.proximal is None
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="proximal_mu"):
            _private("bk", bad)


def test_proximal_term_pulls_site_training_towards_the_global_model(experiment: ExperimentConfig, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """(c) Real synthetic site data (60 patients, 32 x 32): with the same batches and noise, mu > 0
    (lr mu = 0.5) ends nearer the received weights than mu = 0, with the same number of steps."""
    # a fixed seed for sampling and noise so that both runs draw the same (test only: the site's is OS-seeded)
    monkeypatch.setattr(engine, "os_seeded_generator", lambda device: torch.Generator(device=device).manual_seed(7))
    write_hospitals(tmp_path / "sites", sites=1, patients=60, seed=3, image_size=32)
    arrays, _ = load_site(tmp_path / "sites" / "site-a", experiment.data, cache_dir=tmp_path / "cache")
    data = split_dataset(arrays, validation=False)
    train = dataclasses.replace(experiment.train, optimizer="sgd", momentum=0.0, lr=0.05, local_epochs=3,
                                batch_size=8)
    distance, steps = {}, {}
    for mu in (0.0, 10.0):
        model = build_model(experiment.model, num_labs=len(experiment.data.labs),
                            note_buckets=experiment.data.note_buckets, seed=0)
        start = _flat(model.parameters())
        out = train_dp(model, data, cfg=train, dp=DPSettings(1.0, 1.0, "prv", experiment.privacy.grad_sample_mode),
                       prior=[], device=torch.device("cpu"), proximal_mu=mu)
        distance[mu], steps[mu] = float((_flat(model.parameters()) - start).norm()), out.steps
    assert steps[0.0] == steps[10.0] > 3
    assert distance[10.0] < 0.7 * distance[0.0], distance


def test_proximal_mu_above_the_release_maximum_is_refused() -> None:
    """(d) The release's own maximum (configs/validate.py) applies at the coordinator and the site."""
    top = RELEASE_MAXIMA["strategy.proximal_mu"]
    assert load_experiment(["strategy=fedprox", f"strategy.proximal_mu={top}"]).strategy.proximal_mu == top
    for bad in (top * 1.01, -0.01):
        with pytest.raises(ConfigError) as refused:
            load_experiment(["strategy=fedprox", f"strategy.proximal_mu={bad}"])
        assert refused.value.field == "strategy.proximal_mu"


def test_proximal_mu_above_the_sites_limit_is_refused_with_the_field_named() -> None:
    """(d) site.yaml `limits.max_proximal_mu` (default: the release maximum) only lowers it."""
    assert SiteLimits().max_proximal_mu == RELEASE_MAXIMA["strategy.proximal_mu"]
    released = released_experiment()
    requested = load_experiment(["strategy=fedprox", "strategy.proximal_mu=0.5"])
    strict = SiteFileConfig(limits=SiteLimits(max_proximal_mu=0.1))
    with pytest.raises(ConfigError, match=r"^strategy\.proximal_mu: above this site's limit") as refused:
        site_experiment(requested, released, strict)
    assert refused.value.field == "strategy.proximal_mu"
    assert site_experiment(requested, released, SiteFileConfig()).strategy.proximal_mu == 0.5
    no_prox = SiteFileConfig(limits=SiteLimits(max_proximal_mu=0.0))
    assert site_experiment(load_experiment(["strategy=fedavg"]), released, no_prox).strategy.proximal_mu == 0.0


@pytest.mark.usefixtures("task_identity")
def test_the_site_trains_with_the_recipes_mu_within_its_limit(site_copy: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """(d) and the wiring: through the real ClientApp, a mu above site.yaml's limit is refused (602,
    field named, nothing spent); one within it reaches train_dp and the round takes its recorded steps."""
    set_sections(site_copy, limits={"max_proximal_mu": 0.05})
    state = tmp_path / "state"
    refused = send("train", site_copy, state, f"{SMALL_RUN} strategy=fedprox strategy.proximal_mu=0.06")
    assert refused.has_error() and "rejected by the site: strategy.proximal_mu" in refused.error.reason
    seen: list[float] = []

    def spy(*args: object, **kwargs: object):  # the real train_dp, recording the mu it was given
        seen.append(kwargs["proximal_mu"])
        return train_dp(*args, **kwargs)
    monkeypatch.setattr(client.site_round, "train_dp", spy)
    reply = metrics(send("train", site_copy, state, f"{SMALL_RUN} strategy=fedprox strategy.proximal_mu=0.05"))
    assert seen == [0.05] and reply["steps"] > 0


def test_site_yaml_max_proximal_mu_accepts_zero_and_refuses_negative(site_copy: Path) -> None:
    set_sections(site_copy, limits={"max_proximal_mu": 0})
    assert read_site_file(site_copy / "site.yaml", released_experiment().data).limits.max_proximal_mu == 0.0
    set_sections(site_copy, limits={"max_proximal_mu": -1})
    with pytest.raises(SiteDataError, match="limits.max_proximal_mu must be a finite number >= 0"):
        read_site_file(site_copy / "site.yaml", released_experiment().data)
