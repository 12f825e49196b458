"""Im2col for the book-keeping clipper's Conv2d layers (privacy/bookkeeping.py): each sample's
input windows as rows, built in reused buffers."""

from __future__ import annotations

import torch
from torch import nn

CHUNK_ELEMENTS = 1 << 17  # im2col is built for at most this many elements at a time (512 KiB of float32)
CHANNELS_LAST_FROM = 4    # input channels from which im2col copies channels-last rows


class Im2col:
    """One Conv2d's input windows as [n, L, K], built in reused buffers: a zero-bordered padded
    input per layer (only its interior is written) and a scratch shared by all layers (the hooks
    run one at a time). Reuse keeps the allocator from fragmenting as Poisson batch sizes vary.

    With several input channels the padded input is channels-last and K is ordered (kh, kw, in):
    the window copy then reads contiguous runs of kw * in values, which vectorise. With one or two
    channels it stays NCHW and K is the weight's (in, kh, kw). On CPU both are faster than
    F.unfold, and steadier than oneDNN's grouped-convolution weight gradient, whose speed jumps
    between batch sizes."""

    def __init__(self, m: nn.Conv2d, scratch: dict[str, torch.Tensor]) -> None:
        self.m, self.scratch = m, scratch
        self.channels_last = m.in_channels >= CHANNELS_LAST_FROM
        self.padded: torch.Tensor | None = None

    def _padded(self, a: torch.Tensor) -> torch.Tensor:
        (ph, pw), (n, c, h, w) = self.m.padding, a.shape
        shape = (h + 2 * ph, w + 2 * pw, c) if self.channels_last else (c, h + 2 * ph, w + 2 * pw)
        buf = self.padded
        if buf is None or buf.shape[0] < n or buf.shape[1:] != shape or buf.dtype != a.dtype or buf.device != a.device:
            buf = self.padded = a.new_zeros((n, *shape))   # borders stay zero: only the interior is written
        if self.channels_last:
            buf[:n, ph:ph + h, pw:pw + w].copy_(a.permute(0, 2, 3, 1))
        else:
            buf[:n, :, ph:ph + h, pw:pw + w].copy_(a)
        return buf[:n]

    def __call__(self, a: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        (sh, sw), (dh, dw), (kh, kw) = self.m.stride, self.m.dilation, self.m.kernel_size
        n, c_in, positions = a.shape[0], a.shape[1], out_hw[0] * out_hw[1]
        padded = self._padded(a)
        s = padded.stride()
        buf = self.scratch.get("cols")
        if buf is None or buf.numel() < n * c_in * kh * kw * positions or buf.dtype != a.dtype or buf.device != a.device:
            buf = self.scratch["cols"] = a.new_empty(max(n * c_in * kh * kw * positions, CHUNK_ELEMENTS))
        buf = buf[:n * c_in * kh * kw * positions]
        if self.channels_last:
            windows = padded.as_strided((n, *out_hw, kh, kw, c_in),
                                        (s[0], sh * s[1], sw * s[2], dh * s[1], dw * s[2], s[3]))
            buf.view(windows.shape).copy_(windows)
            return buf.view(n, positions, kh * kw * c_in)
        windows = padded.as_strided((n, c_in, kh, kw, *out_hw),
                                    (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3]))
        buf.view(windows.shape).copy_(windows)
        return buf.view(n, c_in * kh * kw, positions).transpose(1, 2)
