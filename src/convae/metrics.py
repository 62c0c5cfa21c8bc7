"""Reconstruction quality per image: MSE, PSNR and SSIM for (B, C, H, W) tensors in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, shape (B,)."""
    return (recon.float() - target.float()).pow(2).flatten(1).mean(1)


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (peak 1.0), shape (B,); capped at 100 dB."""
    return 10 * torch.log10(1.0 / mse(recon, target).clamp_min(1e-10))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(recon: torch.Tensor, target: torch.Tensor, *, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004, Gaussian window), shape (B,).

    The window shrinks to the image for images smaller than it (8x8 digits use 7x7 still; a
    3x3 image uses 3x3); statistics use "valid" positions only.
    """
    x, y = recon.float(), target.float()
    c = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    if size % 2 == 0:
        size -= 1
    w = _gaussian_window(size, sigma, c, x.device, x.dtype)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)
