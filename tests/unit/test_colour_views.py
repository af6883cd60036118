"""Colour views in the SSL augmentation (saturation jitter, grey views): off by default, 3-channel only."""

from __future__ import annotations

import torch

from uft.data.augment import AugmentConfig, augment


def _x(c: int) -> torch.Tensor:
    return torch.rand(8, c, 12, 12, generator=torch.Generator().manual_seed(1))


def test_grey_views_have_equal_channels():
    out = augment(_x(3), AugmentConfig(grayscale_prob=1.0, noise_std=0.0), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2], atol=1e-6)


def test_saturation_jitter_changes_colour_images_only_when_asked():
    x = _x(3)
    plain = augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    jittered = augment(x, AugmentConfig(saturation=0.8), torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, jittered)


def test_one_channel_images_ignore_colour_views_and_draw_the_same_numbers():
    x = _x(1)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = augment(x, AugmentConfig(), g1)
    b = augment(x, AugmentConfig(saturation=0.5, grayscale_prob=0.5), g2)
    assert torch.equal(a, b) and torch.equal(g1.get_state(), g2.get_state())


def test_training_steps_give_colour_images_colour_views_unless_set():
    from uft.data.augment import COLOUR_VIEWS, with_colour_views

    assert with_colour_views(AugmentConfig(), 1) == AugmentConfig()
    assert with_colour_views(AugmentConfig(), 3).saturation == COLOUR_VIEWS["saturation"]
    mine = AugmentConfig(saturation=0.1)
    assert with_colour_views(mine, 3) == mine
