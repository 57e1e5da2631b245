"""The on-device augmentations: crop + flip stays inside its padding, the batched rotation and
shift is torchvision's affine pixel for pixel, and flip + affine draws within its ranges."""
import pytest
import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lipcore.augment import FlipAffine, crop_flip, rotate_shift
from lipcore.experiments.crm_liplt import crm_settings
from lipcore.trainers.standard import TrainConfig


def test_crop_flip_shifts_each_image_inside_its_padding_and_flips_about_half():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 8, 8, generator=gen)
    same = crop_flip(x, gen, padding=0)                     # no room to shift: x or its mirror
    is_x = (same == x).flatten(1).all(1)
    is_mirror = (same == x.flip(-1)).flatten(1).all(1)
    assert (is_x | is_mirror).all() and 60 < is_mirror.sum() < 140
    shifted = crop_flip(x, gen, padding=2)
    assert shifted.shape == x.shape
    padded = nn.functional.pad(x, (2,) * 4)
    for i in range(10):                                     # a window of the padded image
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(shifted[i], w) or torch.equal(shifted[i], w.flip(-1))
                   for w in windows)
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="mixup")


@pytest.mark.parametrize("angle, shift", [(0.0, (0, 0)), (10.0, (3, -2)), (-17.5, (0, 5)),
                                          (90.0, (-4, 1))])
def test_rotate_shift_is_torchvision_affine_pixel_for_pixel(angle, shift):
    x = torch.rand(3, 3, 12, 16, generator=torch.Generator().manual_seed(1))   # not square
    expected = torch.stack([TF.affine(image, angle=angle, translate=list(shift), scale=1.0,
                                      shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST,
                                      fill=0.5) for image in x])
    got = rotate_shift(x, torch.full((3,), angle), torch.tensor([shift] * 3).float(), fill=0.5)
    assert torch.equal(got, expected)


def test_flip_affine_flips_about_half_and_shifts_whole_pixels_within_its_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=gen)
    flipped = FlipAffine(degrees=0, translate=0)(x, gen)
    is_mirror = (flipped == x.flip(-1)).flatten(1).all(1)
    assert ((flipped == x).flatten(1).all(1) | is_mirror).all() and 60 < is_mirror.sum() < 140
    shifted = FlipAffine(degrees=0, translate=0.25, fill=-1.0)(x, gen)     # at most 2 pixels
    for i in range(20):
        candidates = [rotate_shift(image[None], torch.zeros(1), torch.tensor([[dx, dy]]).float(),
                                   fill=-1.0)[0]
                      for image in (x[i], x[i].flip(-1)) for dx in range(-2, 3)
                      for dy in range(-2, 3)]
        assert any(torch.equal(shifted[i], c) for c in candidates)
    assert (shifted == -1.0).any()                          # the fill enters at the borders
    with pytest.raises(ValueError, match="translate"):
        FlipAffine(degrees=10, translate=1.5)


def test_the_crm_settings_use_the_official_augmentation_unless_switched_off():
    on, off = crm_settings("paper"), crm_settings("paper", augment=False)
    assert on["MNIST"].train.augment is None
    assert on["CIFAR-10"].train.augment == FlipAffine(10, 0.1, fill=0.5)    # [-1, 1] zero = grey
    assert on["Tiny-ImageNet"].train.augment == FlipAffine(20, 0.2, fill=0.0)
    assert all(s.train.augment is None for s in off.values())
