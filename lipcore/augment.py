"""Training augmentations done per image on a batch tensor, on its device: torchvision's
transforms draw one set of parameters per call, and the data stays resident on the GPU.

* :func:`crop_flip`: He et al.'s CIFAR augmentation (pad, random crop, flip).
* :class:`FlipAffine`: torchvision's ``RandomHorizontalFlip()`` then ``RandomAffine(degrees,
  translate)`` (rotation about the centre, whole-pixel shifts, nearest neighbour), the official
  CRM code's CIFAR-10 and Tiny-ImageNet augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Each image zero-padded by ``padding``, randomly cropped back to its size and flipped
    left-right with probability 1/2."""
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding,) * 4)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def rotate_shift(x: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor,
                 fill: float = 0.0) -> torch.Tensor:
    """Image i rotated by ``degrees[i]`` about its centre and shifted by ``shifts[i]`` = (right,
    down) pixels, as torchvision's ``affine(img, angle, translate, scale=1, shear=0)`` with
    nearest-neighbour sampling; pixels from outside the image become ``fill``.

    The sampling grid maps each output pixel p (relative to the centre) back to R^-1 (p - t),
    R = [[cos a, -sin a], [sin a, cos a]]; in grid_sample's [-1, 1] coordinates that is
    S R^-1 S^-1 n - S R^-1 t with S = diag(2/W, 2/H)."""
    n, _, h, w = x.shape
    a = torch.deg2rad(degrees.to(x.device, x.dtype))
    cos, sin = a.cos(), a.sin()
    inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    scale = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)
    linear = scale[:, None] * inverse / scale[None, :]
    offset = -scale * (inverse @ shifts.to(x.device, x.dtype)[:, :, None])[..., 0]
    grid = F.affine_grid(torch.cat([linear, offset[:, :, None]], 2), list(x.shape),
                         align_corners=False)
    return F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros",
                         align_corners=False) + fill


@dataclass(frozen=True)
class FlipAffine:
    """Random left-right flip (p = 1/2), then a rotation by an angle uniform in [-degrees,
    degrees] and a shift of round(uniform(-translate, translate) * size) pixels along each axis,
    drawn per image. ``fill`` is what enters at the borders, in the data's own units."""

    degrees: float
    translate: float
    fill: float = 0.0

    def __post_init__(self):
        if self.degrees < 0 or not 0 <= self.translate <= 1:
            raise ValueError(f"need degrees >= 0 and 0 <= translate <= 1, got {self}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        angles = (2 * torch.rand(n, generator=generator) - 1) * self.degrees
        reach = torch.tensor([self.translate * w, self.translate * h])
        shifts = ((2 * torch.rand(n, 2, generator=generator) - 1) * reach).round()
        return rotate_shift(x, angles, shifts, self.fill)
