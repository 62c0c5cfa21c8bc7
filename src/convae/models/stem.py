"""A fixed first stage of oriented filters under the learned stages: first-order wavelet scattering.

This is the fixed front end of hybrid scattering networks (Oyallon et al. 2017): per input channel, a
Gaussian low-pass and ``L`` oriented Morlet wavelets at each of ``J`` scales, the wavelets' complex
modulus, then the low-pass at scale ``2**J`` and a ``2**J`` subsampling. Per input channel that is
``1 + J * L`` maps at ``ceil(H / 2**J) x ceil(W / 2**J)``: the low-passed image and the local energy of
each scale and orientation. With J=1, L=8 on 28x28 grayscale images: 9 maps of 14x14.

The filters are Kymatio's (its Morlet and Gabor designs, ``kymatio.scattering2d.filter_bank``), laid
out as small spatial kernels so the stage is two ordinary convolutions: it runs wherever convolutions
run, exports to ONNX, and costs a few MFLOP per image (:meth:`ScatteringStem.flops`: 4.6 on 28x28). Kymatio itself
computes the transform with FFTs over a periodised, reflect-padded image; here the image is
reflect-padded and convolved, so the two agree away from the borders (measured on Fashion-MNIST while
building it, relative error 4e-5 at J=1, and on blurred random images in ``tests/test_stem.py``).

Nothing in the stage is learned or fitted to data. Its outputs are divided by a fixed scale per map
and clipped to [0, 1], so that they are in the range the autoencoder reconstructs (its decoder ends in
a sigmoid): the low-pass needs none (it averages an image in [0, 1]); each wavelet map is divided by
its peak response to a unit step edge across its orientation. On Fashion-MNIST that scale is 0.79x to
1.55x the 99.9th percentile of each map over the training images (the horizontal and vertical maps,
whose strokes respond more than an edge, clip at 1 slightly more often); a data-free scale keeps the
stage the same for every dataset and the untrained baseline the same as the trained network's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchitectureError

STEMS = (None, "scattering")
SIGMA0, XI0 = 0.8, 3.0 * math.pi / 4.0  # Kymatio's scale-0 bandwidth and centre frequency


def _kernel_size(sigma: float, slant: float) -> int:
    """Odd window that holds the Gaussian envelope to 3.5 sigma along its long axis (sigma / slant)."""
    return 2 * math.ceil(3.5 * sigma / slant) + 1


def _filters(J: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Wavelets (J * L, K, K) complex, scale-major then angle, and the low-pass (K', K'), both centred."""
    from kymatio.scattering2d.filter_bank import gabor_2d, morlet_2d

    slant = 4.0 / L
    k = _kernel_size(SIGMA0 * 2 ** (J - 1), slant)  # the widest wavelet's window; all share it
    psi = np.stack([
        morlet_2d(k, k, SIGMA0 * 2 ** j, (int(L - L / 2 - 1) - t) * np.pi / L, XI0 / 2 ** j, slant, offset=-(k // 2))
        for j in range(J) for t in range(L)
    ])
    sigma_phi = SIGMA0 * 2 ** (J - 1)
    kp = _kernel_size(sigma_phi, 1.0)
    phi = np.real(gabor_2d(kp, kp, sigma_phi, 0, 0, offset=-(kp // 2)))
    return psi, phi / phi.sum()


class ScatteringStem(nn.Module):
    """First-order scattering of each input channel: (B, C, H, W) in [0, 1] -> (B, C * (1 + J * L), h, w) in [0, 1].

    Output channels are ordered per input channel: its low-pass, then its wavelet maps (scale-major,
    then angle). ``h, w = ceil(H / 2**J), ceil(W / 2**J)``.
    """

    def __init__(self, in_channels: int, J: int = 1, L: int = 8):
        super().__init__()
        if int(J) != J or J < 1:
            raise ArchitectureError(f"stem_J (scales of the scattering stem) must be a positive int, got {J!r}")
        if int(L) != L or L < 1:
            raise ArchitectureError(f"stem_L (angles of the scattering stem) must be a positive int, got {L!r}")
        self.in_channels, self.J, self.L = int(in_channels), int(J), int(L)
        psi, phi = _filters(self.J, self.L)
        wavelets = torch.from_numpy(np.concatenate([psi.real, psi.imag])).float()[:, None]  # (2 * J * L, 1, K, K)
        self.register_buffer("wavelets", wavelets, persistent=False)
        n = 1 + self.J * self.L
        self.register_buffer("lowpass", torch.from_numpy(phi).float().expand(n, 1, *phi.shape).clone(), persistent=False)
        self.register_buffer("scale", self._edge_scale(), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (1 + self.J * self.L)

    @property
    def stride(self) -> int:
        return 2 ** self.J

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return math.ceil(h / self.stride), math.ceil(w / self.stride)

    @property
    def receptive_field(self) -> int:
        """Input pixels one output position sees across (the wavelet window plus the low-pass window, less one)."""
        return self.wavelets.shape[-1] + self.lowpass.shape[-1] - 1

    def flops(self, h: int, w: int) -> int:
        """Forward FLOPs (2 x multiply-accumulates) on one H x W image: the wavelet conv at full resolution and the
        low-pass conv at the output's."""
        k, kp, n = self.wavelets.shape[-1], self.lowpass.shape[-1], self.J * self.L
        oh, ow = self.out_size(h, w)
        return 2 * self.in_channels * (2 * n * k * k * h * w + (1 + n) * kp * kp * oh * ow)

    def _maps(self, x: torch.Tensor, *, pad: bool = True, stride: int | None = None) -> torch.Tensor:
        """(B, C, H, W) -> unscaled (B, C * (1 + J * L), h, w). ``pad=False, stride=1`` keeps only the positions
        whose windows lie inside the image, at every pixel (the edge scale's measurement)."""
        b, c, h, w = x.shape
        x = x.reshape(b * c, 1, h, w)
        k, kp, n = self.wavelets.shape[-1], self.lowpass.shape[-1], self.J * self.L
        y = F.conv2d(_pad(x, k // 2) if pad else x, self.wavelets.to(x.dtype))  # (B * C, 2n, ., .): real parts, then imaginary
        modulus = torch.sqrt(y[:, :n].square() + y[:, n:].square() + 1e-12)
        z = torch.cat([x if pad else x[..., k // 2:h - k // 2, k // 2:w - k // 2], modulus], dim=1)
        z = F.conv2d(_pad(z, kp // 2) if pad else z, self.lowpass.to(x.dtype), stride=stride or self.stride, groups=1 + n)
        return z.reshape(b, c * (1 + n), *z.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(x.dtype).repeat(self.in_channels)[:, None, None]
        return (self._maps(x) / scale).clamp(0.0, 1.0)

    def _edge_scale(self) -> torch.Tensor:
        """Per map of one channel: 1 for the low-pass; for each wavelet, its largest response to a unit step
        edge across its orientation (the step's value is 0 on one side and 1 on the other)."""
        size = 4 * self.receptive_field + 1
        u = torch.arange(size, dtype=torch.float64) - size // 2
        rows, cols = torch.meshgrid(u, u, indexing="ij")
        scales = [1.0]
        for j in range(self.J):
            for t in range(self.L):
                theta = (int(self.L - self.L / 2 - 1) - t) * math.pi / self.L
                # Kymatio's wavelet oscillates along (cos theta, sin theta) in (row, column) coordinates.
                edge = (rows * math.cos(theta) + cols * math.sin(theta) >= 0).double()
                maps = self._maps(edge[None, None], pad=False, stride=1)  # every map of this edge, in float64
                scales.append(float(maps[0, 1 + j * self.L + t].max()))
        return torch.tensor(scales, dtype=torch.float32)


def _pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Reflect-pad by ``p`` (Kymatio pads by reflection too); a map too small to reflect that far is
    padded with its edge values."""
    if p == 0:
        return x
    mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)
