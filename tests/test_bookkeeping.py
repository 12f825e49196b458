"""The book-keeping clipper ("bk") on its own: exact per-sample norms and clipped sums for every
supported layer shape (against a loop over single samples), and clear refusals of what it cannot
clip exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privacy.dpsgd.bookkeeping import BookkeepingClipper


class _Tokens(nn.Module):
    """Embedding (with or without padding_idx) + masked mean + Linear over 3-D input."""

    def __init__(self, padding_idx: int | None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 6, padding_idx=padding_idx)
        self.per_token = nn.Linear(6, 4)          # applied to [B, T, 6]: the per-sample sum over T
        self.out = nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.per_token(self.embedding(tokens)))          # [B, T, 4]
        return self.out(h.mean(dim=1)).squeeze(1)


class _Convs(nn.Module):
    """Convs with stride, dilation, asymmetric padding, no bias, a 1x1 conv, GroupNorm, and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=(1, 2))
        self.norm = nn.GroupNorm(2, 6)
        self.b = nn.Conv2d(6, 8, 3, dilation=2, padding=1, bias=False)
        self.c = nn.Conv2d(8, 12, 1)
        self.frozen = nn.Linear(12, 12)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.a(x)))
        h = torch.relu(self.c(torch.relu(self.b(h))))
        return self.head(torch.relu(self.frozen(h.mean(dim=(2, 3))))).squeeze(1)


def _per_sample_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B, P] true per-sample gradients of the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(y)):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x[i:i + 1]), y[i:i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def _clipped(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    clipper = BookkeepingClipper(model, clip)
    try:
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        clipper.clipped_backward(loss, len(y))
    finally:
        clipper.close()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return clipper.per_sample_gradient_norms, grads


def _cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tokens = torch.randint(1, 50, (9, 12), generator=g)
    tokens[0] = 5                 # one id, repeated
    tokens[1, 6:] = 0             # padding
    tokens[2] = torch.randint(1, 3, (12,), generator=g)
    big = torch.rand(3, 2, 80, 80, generator=g)  # im2col 50 x 6400 per sample: more than one chunk
    return [
        ("embedding+padding_idx", _Tokens(padding_idx=0), tokens),
        ("embedding", _Tokens(padding_idx=None), tokens),
        ("convs", _Convs(), torch.rand(9, 3, 11, 13, generator=g)),
        # a conv whose im2col is larger than one chunk per sample: one sample per chunk
        ("chunked conv", nn.Sequential(nn.Conv2d(2, 4, 5, padding=2), nn.Flatten(2), nn.AdaptiveAvgPool1d(1),
                                       nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0)), big),
        # channels-last im2col (5 input channels) with a non-square kernel, stride and dilation
        ("channels-last conv", nn.Sequential(nn.Conv2d(5, 3, (3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
                                             nn.Flatten(1), nn.Linear(3 * 4 * 10, 1), nn.Flatten(0)),
         torch.rand(7, 5, 9, 10, generator=g)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_norms_and_clipped_sums_match_a_per_sample_loop(case: int) -> None:
    name, model, x = _cases()[case]
    y = (torch.arange(len(x)) % 2).float()
    true = _per_sample_loop(model, x, y)
    true_norms = true.norm(dim=1)
    clip = float(true_norms.median())
    norms, clipped_sum = _clipped(model, x, y, clip)
    assert torch.allclose(norms, true_norms, rtol=1e-4, atol=1e-7), name
    expected = (true * (clip / (true_norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0)
    assert (clipped_sum - expected).norm() <= 1e-4 * expected.norm(), name


def test_a_layer_whose_output_does_not_reach_the_loss_gets_a_zero_clipped_sum() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x).squeeze(1)

    model = Unused()
    model.unused.weight.grad = torch.ones(1, 3)  # stale: not this step's gradient
    x, y = torch.randn(4, 3), torch.ones(4)
    _, grads = _clipped(model, x, y, 1.0)
    assert model.unused.weight.grad is not None and not model.unused.weight.grad.any()
    assert model.used.weight.grad.abs().sum() > 0 and grads.numel() == 8


@pytest.mark.parametrize(("model", "message"), [
    (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), r"layer 1 \(BatchNorm1d\).*'hooks'"),
    (nn.Conv2d(4, 4, 3, groups=2), "groups=1"),
    (nn.Conv2d(1, 4, 3, padding="same"), "numeric zero padding"),
    (nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), "numeric zero padding"),
    (nn.Embedding(10, 3, sparse=True), "sparse"),
    (nn.Embedding(10, 3, max_norm=1.0), "max_norm"),
])
def test_layers_it_cannot_clip_exactly_are_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BookkeepingClipper(model, 1.0)


def test_tied_parameters_are_refused() -> None:
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    with pytest.raises(ValueError, match="tied parameters"):
        BookkeepingClipper(nn.Sequential(a, b), 1.0)


def test_a_layer_run_twice_in_one_forward_is_refused_before_any_gradient() -> None:
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    clipper = BookkeepingClipper(model, 1.0)
    loss = model(torch.randn(4, 3)).sum()
    with pytest.raises(RuntimeError, match="ran twice"):
        clipper.clipped_backward(loss, 4)
    assert layer.weight.grad is None


def test_evaluation_and_a_closed_clipper_record_nothing() -> None:
    model = _Convs()
    clipper = BookkeepingClipper(model, 1.0)
    with torch.no_grad():
        model(torch.rand(2, 3, 8, 8))
    assert clipper._ran == []  # no activation is kept by a no-grad forward pass
    clipper.close()
    model(torch.rand(2, 3, 8, 8))
    assert clipper._ran == [] and not model.a._forward_hooks


def test_an_in_place_change_of_a_layer_input_is_refused() -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.first(x) * 1.0
            out = self.second(h)
            h.mul_(2.0)  # the second layer's recorded input no longer is what it saw
            return out.squeeze(1)

    model = InPlace()
    clipper = BookkeepingClipper(model, 1.0)
    loss = model(torch.randn(4, 3)).sum()
    with pytest.raises(RuntimeError, match="in-place operation changed the input of a Linear"):
        clipper.clipped_backward(loss, 4)


def test_one_clipper_stays_exact_across_batch_sizes_and_partial_chunks() -> None:
    """Reused im2col buffers: a larger batch after a smaller one, then a smaller one again, and
    chunks of two samples with a partial last chunk (2 x 50 x 900 im2col values per chunk)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 5, padding=2), nn.GroupNorm(2, 4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 1), nn.Flatten(0))
    clipper = BookkeepingClipper(model, 0.5)
    g = torch.Generator().manual_seed(2)
    for size in (5, 9, 3):
        x, y = torch.rand(size, 2, 30, 30, generator=g), (torch.arange(size) % 2).float()
        true = _per_sample_loop(model, x, y)
        model.zero_grad(set_to_none=True)
        clipper.clipped_backward(nn.functional.binary_cross_entropy_with_logits(model(x), y), size)
        assert torch.allclose(clipper.per_sample_gradient_norms, true.norm(dim=1), rtol=1e-4), size
        expected = (true * (0.5 / (true.norm(dim=1) + 1e-6)).clamp(max=1.0)[:, None]).sum(0)
        got = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert (got - expected).norm() <= 1e-4 * expected.norm(), size
    clipper.close()


def _weight_sum_convs() -> nn.Module:
    """Convs whose clipped sums come from input x output gradient (torch.nn.grad.conv2d_weight over
    the whole batch), not from kept per-sample matrices: the first takes the im2col norm branch,
    the second the Gram-matrix ("ghost") norm branch."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(16, 56, 3, padding=1), nn.ReLU(), nn.Conv2d(56, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1), nn.Flatten(0))


def _poisoned(case: int) -> tuple[str, nn.Module, torch.Tensor]:
    """A case in which only sample 0 has a non-finite gradient: its image is 3e38 everywhere
    (finite; the first layer's output overflows), or its tokens are all one id, found in no other
    sample, whose embedding row is inf."""
    cases = [*_cases(), ("weight-sum convs", _weight_sum_convs(), torch.rand(5, 16, 8, 8))]
    name, model, x = cases[case]
    x = x.clone()
    if x.dtype == torch.long:
        x[x == 49] = 48
        x[0] = 49
        with torch.no_grad():
            model.embedding.weight[49] = float("inf")
    else:
        x[0] = 3e38
    return name, model, x


@pytest.mark.parametrize("case", range(6))
def test_a_sample_with_a_non_finite_gradient_adds_exactly_zero(case: int) -> None:
    """Its clip factor is 0 and its rows of every multiplied tensor (inputs with inf or 3e38,
    output gradients with NaN) are zeroed: the clipped sum is that of the other samples."""
    name, model, x = _poisoned(case)
    y = (torch.arange(len(x)) % 2).float()
    clip = float(_per_sample_loop(model, x[1:], y[1:]).norm(dim=1).median())
    clipper = BookkeepingClipper(model, clip)
    losses = nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none")
    finite = torch.isfinite(losses)
    clipper.clipped_backward(torch.where(finite, losses, 0.0).mean(), len(y), finite)
    clipper.close()
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert not torch.isfinite(clipper.per_sample_gradient_norms[0]), name
    assert bool(torch.isfinite(clipper.per_sample_gradient_norms[1:]).all()), name
    _, expected = _clipped(model, x[1:], y[1:], clip)
    assert bool(torch.isfinite(got).all()), name
    assert (got - expected).norm() <= 1e-5 * expected.norm(), name


def test_a_sample_whose_loss_is_not_finite_is_masked_though_its_gradient_is_finite() -> None:
    """finite_losses masks it: here its inf loss is a constant, so its gradient is an ordinary one."""
    name, model, x = _cases()[2]
    y = (torch.arange(len(x)) % 2).float()
    clip = 0.05
    _, expected = _clipped(model, x[1:], y[1:], clip)
    _, with_first = _clipped(model, x, y, clip)
    assert (with_first - expected).norm() > 1e-3 * expected.norm()  # the first sample does count otherwise
    clipper = BookkeepingClipper(model, clip)
    losses = nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none")
    losses = losses + torch.where(torch.arange(len(y)) == 0, float("inf"), 0.0)
    clipper.clipped_backward(losses.mean(), len(y), torch.isfinite(losses))
    clipper.close()
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert (got - expected).norm() <= 1e-5 * expected.norm(), name
