"""Batch augmentation on whole uint8 tensors `(B, C, H, W)`: no per-image PIL work."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, per image, on a whole uint8 batch.

    images: `(B, C, H, W)`; returns `(B, C, H, W)`; offsets and flips drawn from `generator`.
    """
    b, c, h, w = images.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h)).to(images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(images.device)  # flip = reversed cols
    batch_idx = torch.arange(b, device=images.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def random_resized_crop_flip(images: torch.Tensor, size: int, generator: torch.Generator,
                             scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crop plus flip on a batch, via one `grid_sample`.

    images: uint8 or float `(B, C, H, W)`; returns float `(B, C, size, size)` on the 0..255 scale.
    Crop area ~ U(scale) * H * W, aspect ratio log-uniform in `ratio`, clipped to the image.
    """
    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(*scale, generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    # crop sides as fractions of the image sides
    cw = (area * aspect * h / w).sqrt().clamp(max=1.0)
    ch = (area / aspect * w / h).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # centre in [-1, 1] coords
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)  # -1: flip
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre `size x size` crop of `(B, C, H, W)`."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


__all__ = ["center_crop", "pad_crop_flip", "random_resized_crop_flip"]
