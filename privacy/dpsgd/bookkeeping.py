"""Book-keeping per-sample clipping: exact clipped gradient sums from one backward pass.

The "bk" grad_sample_mode (after Bu et al., "Differentially Private Optimization on Large Model
at Small Cost", ICML 2023). Forward hooks keep each trainable layer's input `a` and output `z`.
One autograd pass then computes dL/dz for every layer and no parameter gradient at all. From
(`a`, dL/dz) each layer gives every sample's squared gradient norm; the clip factors
c_b = min(1, C / (||g_b|| + 1e-6)) follow (Opacus' formula), and each layer's clipped sum
sum_b c_b g_b is one batched product of its input with the c-weighted output gradient. Nothing
is back-propagated twice and no per-sample gradient is stored on a parameter.

Exact for nn.Linear, nn.Conv2d (groups 1, zero padding), nn.GroupNorm and nn.Embedding (repeated
ids accumulate; padding_idx respected). A model with any other trainable layer, a layer called
twice in one forward pass, or tied parameters is refused when the clipper is built. Every sample
must only influence its own output (no BatchNorm, no cross-sample ops), as for every DP-SGD mode.

A sample whose loss or gradient norm is not finite is masked: clip factor 0 and its rows of every
tensor the clipped sum multiplies zeroed with torch.where, so it contributes exactly zero
(privacy/finite_clipping.py says why). The all-finite batch pays one `isfinite` check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from privacy.dpsgd.bk_im2col import CHUNK_ELEMENTS as _CHUNK_ELEMENTS
from privacy.dpsgd.bk_im2col import Im2col as _Im2col
from privacy.dpsgd.finite_clipping import clip_factors, kept_samples, zero_rows

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.Embedding)
# Layers whose bias gradient autograd computes without their weight gradient (oneDNN's
# convolution backward computes both together: asking for a Conv2d bias costs its weight gradient).
_CHEAP_BIAS_GRADIENT = (nn.Linear, nn.GroupNorm)


@dataclass
class _LayerGradient:
    """One layer's per-sample squared gradient norms [B] and how to write its clipped sum.

    `write(c, *rows)` sets the layer's `.grad` to sum_b c_b g_b, computed from `rows`: the
    batch-first tensors [B, ...] that it multiplies by the clip factors c [B] (the layer input and
    output gradient, or per-sample gradients)."""

    sq_norms: torch.Tensor
    write: Callable[..., None]
    rows: tuple[torch.Tensor, ...]

    def write_clipped_sum(self, c: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """c: clip factors [B], 0 for a masked sample; keep: [B] bool, False for a masked sample
        (None: none is). A masked sample's rows become zeros first (torch.where: its activations
        may be inf and 0 * inf = NaN), so it adds exactly zero to the sum."""
        c = c.to(self.rows[0].dtype)
        self.write(c, *(self.rows if keep is None else (zero_rows(r, keep) for r in self.rows)))


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of a [B, ...] tensor, in float64 [B].

    Float64 on purpose: a norm assembled from factors (||a||^2 ||g||^2, Gram matrices) must not
    underflow or flush to zero where the product written to `.grad` does not: crafted weights can
    make a patient's activations ~1e18 and its output gradient ~1e-19, whose float32 square is
    denormal (0 with flush-to-zero), and that patient would not be clipped at all."""
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), dtype=torch.float64).square()


def _set_grad(p: torch.nn.Parameter | None, value: torch.Tensor) -> None:
    if p is not None and p.requires_grad:
        p.grad = value.reshape(p.shape).to(p.dtype)


def _trainable(p: torch.nn.Parameter | None) -> bool:
    return p is not None and p.requires_grad


def _linear(m: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> _LayerGradient:
    if a.dim() == 2:  # ||g_b a_b^T||^2 = ||a_b||^2 ||g_b||^2: no per-sample matrix is built
        g_sq = _sq_norms(g)
        sq = _sq_norms(a) * g_sq if _trainable(m.weight) else torch.zeros_like(g_sq)
        if _trainable(m.bias):
            sq = sq + g_sq

        def write(c: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> None:
            gc = g * c[:, None]
            _set_grad(m.weight, gc.t() @ a)
            _set_grad(m.bias, gc.sum(0))
        return _LayerGradient(sq, write, (a, g))
    a3, g3 = a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
    per_sample = torch.bmm(g3.transpose(1, 2), a3)      # [B, out, in]
    bias = g3.sum(1)                                     # [B, out]
    return _materialised(m, per_sample, bias)


def _per_sample_layer(m: nn.Module, weight_sq: torch.Tensor, weight_sum: Callable[..., torch.Tensor],
                      weight_rows: tuple[torch.Tensor, ...], bias: torch.Tensor) -> _LayerGradient:
    """A layer from its per-sample weight-gradient squared norms [B], `weight_sum(c, *weight_rows)`
    giving the c-weighted sum of its per-sample weight gradients from batch-first tensors
    `weight_rows`, and its per-sample bias gradients [B, out]."""
    sq = weight_sq if _trainable(m.weight) else torch.zeros_like(weight_sq)
    if _trainable(m.bias):
        sq = sq + _sq_norms(bias)

    def write(c: torch.Tensor, bias: torch.Tensor, *weight_rows: torch.Tensor) -> None:
        if _trainable(m.weight):
            _set_grad(m.weight, weight_sum(c, *weight_rows))
        _set_grad(m.bias, c @ bias)
    return _LayerGradient(sq, write, (bias, *weight_rows))


def _materialised(m: nn.Module, per_sample_weight: torch.Tensor, bias: torch.Tensor) -> _LayerGradient:
    """Per-sample weight gradients [B, ...] kept as they are (small layers)."""
    flat = per_sample_weight.reshape(per_sample_weight.shape[0], -1)
    return _per_sample_layer(m, _sq_norms(flat), torch.matmul, (flat,), bias)


def _conv2d(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, im2col: _Im2col) -> _LayerGradient:
    b, out, positions = a.shape[0], m.out_channels, g.shape[2] * g.shape[3]
    k = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    g3 = g.reshape(b, out, positions)                    # [B, out, L]
    ghost = 2 * positions * positions < out * k          # the cheaper way to a per-sample norm
    keep = not ghost and out * k <= a[0].numel() + g[0].numel()  # per-sample matrices are the smaller
    per_sample = g.new_empty(b, out, k) if keep else None
    weight_sq = torch.empty(b, dtype=torch.float64, device=g.device)
    rows = max(1, _CHUNK_ELEMENTS // (k * positions))   # bounds the im2col memory
    for start in range(0, b, rows):
        part = slice(start, start + rows)
        cols = im2col(a[part], g.shape[2:])              # [n, L, K]; valid until the next call
        if ghost:  # ||g_b cols_b^T||^2 = <g_b^T g_b, cols_b cols_b^T>: two L x L Gram matrices (float64)
            g64, cols64 = g3[part].double(), cols.double()
            gram = torch.bmm(g64.transpose(1, 2), g64)
            weight_sq[part] = (gram * torch.bmm(cols64, cols64.transpose(1, 2))).sum((1, 2))
        elif keep:
            weight_sq[part] = _sq_norms(torch.bmm(g3[part], cols, out=per_sample[part]))
        else:
            weight_sq[part] = _sq_norms(torch.bmm(g3[part], cols))
    if per_sample is not None:
        flat = per_sample.reshape(b, -1)
        kh, kw = m.kernel_size

        def kept_sum(c: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
            total = c @ flat
            return total.view(out, kh, kw, -1).permute(0, 3, 1, 2) if im2col.channels_last else total
        return _per_sample_layer(m, weight_sq, kept_sum, (flat,), g3.sum(2))

    def weight_sum(c: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # one weight gradient
        return torch.nn.grad.conv2d_weight(a, m.weight.shape, g * c.view(-1, 1, 1, 1), stride=m.stride,
                                           padding=m.padding, dilation=m.dilation)
    return _per_sample_layer(m, weight_sq, weight_sum, (a, g), g3.sum(2))


def _group_norm(m: nn.GroupNorm, a: torch.Tensor, g: torch.Tensor) -> _LayerGradient:
    b = a.shape[0]
    normalised = F.group_norm(a, m.num_groups, eps=m.eps).reshape(b * m.num_channels, 1, -1)
    g3 = g.reshape(b * m.num_channels, -1, 1)
    weight = torch.bmm(normalised, g3).view(b, m.num_channels)   # [B, C]: sum over positions, no product tensor
    return _materialised(m, weight, g3.view(b, m.num_channels, -1).sum(2))


def _embedding(m: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> _LayerGradient:
    b, dim = ids.shape[0], m.embedding_dim
    ids, g = ids.reshape(-1), g.reshape(-1, dim)         # [B*T], [B*T, D]
    if m.padding_idx is not None:                        # that row never receives a gradient
        g = torch.where((ids != m.padding_idx).unsqueeze(1), g, torch.zeros((), dtype=g.dtype, device=g.device))
    # a sample's gradient row for id v is the sum of g_t over its tokens with id v (repeats
    # accumulate): sum those per (sample, id) pair, then add the pairs' squared norms per sample
    sample = torch.arange(b, device=ids.device).repeat_interleave(len(ids) // b)
    pairs, pair_of_token = torch.unique(sample * m.num_embeddings + ids, return_inverse=True)
    rows = g.new_zeros(len(pairs), dim).index_add_(0, pair_of_token, g)
    sq = torch.zeros(b, dtype=torch.float64, device=g.device).index_add_(
        0, torch.div(pairs, m.num_embeddings, rounding_mode="floor"), _sq_norms(rows))

    def write(c: torch.Tensor, g_rows: torch.Tensor) -> None:
        weighted = g_rows.reshape(-1, dim) * c[sample].unsqueeze(1)
        _set_grad(m.weight, torch.zeros_like(m.weight).index_add_(0, ids, weighted))
    return _LayerGradient(sq, write, (g.reshape(b, -1, dim),))


def _layer_gradient(m: nn.Module, a: torch.Tensor, g: torch.Tensor, im2col: _Im2col | None) -> _LayerGradient:
    if isinstance(m, nn.Linear):
        return _linear(m, a, g)
    if isinstance(m, nn.Conv2d) and im2col is not None:
        return _conv2d(m, a, g, im2col)
    if isinstance(m, nn.GroupNorm):
        return _group_norm(m, a, g)
    return _embedding(m, a, g)


def _check_supported(m: nn.Module) -> None:
    name = type(m).__name__
    if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
        raise ValueError(f"grad_sample_mode 'bk' supports Conv2d with groups=1 and numeric zero padding only "
                         f"({name}: groups={m.groups}, padding={m.padding!r}, padding_mode={m.padding_mode!r})")
    if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse):
        raise ValueError("grad_sample_mode 'bk' supports nn.Embedding without max_norm, scale_grad_by_freq "
                         "and sparse gradients")


class BookkeepingClipper:
    """Hooks a model's trainable layers; `clipped_backward` writes sum_b c_b g_b to each `.grad`.

    Every layer is processed inside the backward pass, by a hook on its output, as soon as its
    output gradient exists (still in cache); what the clipped sum needs is kept until it is
    written (per-sample matrices for small layers, else the input and output gradient, whichever
    is smaller), everything else is released. Autograd is asked for what makes the pass run
    through every layer at the least cost: a Linear or GroupNorm layer's bias gradient (cheap, and
    the output gradient is freed as in a plain backward pass), else the layer's output gradient
    (oneDNN's convolution backward computes a bias gradient only together with the weight one).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.max_grad_norm = float(max_grad_norm)
        self.per_sample_gradient_norms: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._params: list[nn.Parameter] = []
        self._scratch: dict[str, torch.Tensor] = {}
        self._im2col: dict[int, _Im2col] = {}
        covered: set[int] = set()
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(m, SUPPORTED_LAYERS):
                raise ValueError(f"grad_sample_mode 'bk' cannot clip layer {name or 'model'} ({type(m).__name__}): "
                                 f"supported are {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}; "
                                 "use grad_sample_mode 'hooks' for other layers")
            _check_supported(m)
            if any(id(p) in covered for p in own):
                raise ValueError(f"grad_sample_mode 'bk' does not support tied parameters (layer {name})")
            covered.update(id(p) for p in own)
            self._params += own
            if isinstance(m, nn.Conv2d):
                self._im2col[id(m)] = _Im2col(m, self._scratch)
            self._handles.append(m.register_forward_hook(self._record))
        self._handles.append(model.register_forward_pre_hook(self._start_forward))
        self._start_forward(model, ())

    def _start_forward(self, module: nn.Module, args: object) -> None:
        self._ran: list[nn.Module] = []
        self._anchors: list[torch.Tensor] = []        # what autograd is asked for
        self._layers: list[_LayerGradient] = []

    def _record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        self._ran.append(module)
        inputs = args[0]
        held = [inputs.detach()]  # popped when used: the hook keeps no activation alive after
        version = inputs._version

        def on_output_grad(g: torch.Tensor) -> None:  # runs before autograd captures an anchor
            if not held:
                return
            a = held.pop()
            if a._version != version:
                raise RuntimeError(f"grad_sample_mode 'bk': an in-place operation changed the input of a "
                                   f"{type(module).__name__} layer after it ran; its per-sample gradients "
                                   "would be wrong (use out-of-place operations, or 'hooks')")
            self._layers.append(_layer_gradient(module, a, g, self._im2col.get(id(module))))
        output.register_hook(on_output_grad)
        bias = getattr(module, "bias", None)
        self._anchors.append(bias if isinstance(module, _CHEAP_BIAS_GRADIENT) and _trainable(bias) else output)

    def clipped_backward(self, mean_loss: torch.Tensor, batch_size: int,
                         finite_losses: torch.Tensor | None = None) -> None:
        """From the batch-mean loss of the model's last forward pass (scalar, over batch_size = B
        samples), set every trainable parameter's `.grad` to the sum over samples of its clipped
        per-sample gradient, with non-finite samples masked.

        finite_losses: [B] bool, False for a sample whose loss was not finite (replace those
        losses by 0 with torch.where before the mean, so their gradient is zero); None: all
        finite. A sample whose loss or per-sample gradient norm is not finite contributes exactly
        zero (privacy/finite_clipping.py: otherwise the DP sum is a membership oracle); if every
        sample is masked every `.grad` is zero, as for an empty batch."""
        if len(set(map(id, self._ran))) != len(self._ran):
            raise RuntimeError("grad_sample_mode 'bk': a layer ran twice in one forward pass; its per-sample "
                               "gradient would be a sum the clipper does not build (use 'hooks')")
        for p in self._params:
            p.grad = None
        # the gradient of the per-sample loss sum is, per sample, that sample's own gradient
        torch.autograd.grad(mean_loss * batch_size, self._anchors, allow_unused=True)
        layers = self._layers
        self._start_forward(None, ())
        norms = (torch.stack([layer.sq_norms for layer in layers]).sum(0).sqrt() if layers
                 else mean_loss.new_zeros(batch_size, dtype=torch.float64))
        keep = kept_samples(norms, finite_losses)   # None: every sample kept (the fast path)
        factors = clip_factors(norms, self.max_grad_norm, keep)
        for layer in layers:
            layer.write_clipped_sum(factors, keep)
        for p in self._params:  # a layer whose output did not reach the loss: its clipped sum is zero
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.per_sample_gradient_norms = norms.detach().to(mean_loss.dtype)  # computed in float64

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._im2col = [], {}
        self._scratch.clear()
        self._start_forward(None, ())
