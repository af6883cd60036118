"""The batched augmentation and the training fast path stay deterministic and in range."""

from __future__ import annotations

import torch

from uft.data.augment import AugmentConfig, augment


def test_augment_is_deterministic_and_in_range():
    x = torch.rand(16, 3, 12, 12)
    a = augment(x, AugmentConfig(hflip=0.5), torch.Generator().manual_seed(3))
    b = augment(x, AugmentConfig(hflip=0.5), torch.Generator().manual_seed(3))
    c = augment(x, AugmentConfig(hflip=0.5), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_augment_consumes_one_batched_draw_then_the_noise():
    """On CPU: 9·N uniforms (8 without blur) in one draw, then N·C·H·W normals, from the caller's generator."""
    x = torch.rand(5, 1, 8, 8)
    for cfg, k in [(AugmentConfig(), 9), (AugmentConfig(blur_prob=0.0), 8)]:
        g, ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        augment(x, cfg, g)
        torch.rand(k * 5, generator=ref)
        torch.randn(x.shape, generator=ref)
        assert torch.equal(g.get_state(), ref.get_state())


def test_blur_applies_only_to_chosen_images():
    x = torch.rand(64, 1, 8, 8)
    cfg = AugmentConfig(crop_scale_min=1.0, max_rotation_deg=0.0, brightness=0.0, contrast=0.0, noise_std=0.0)
    none = augment(x, cfg.model_copy(update={"blur_prob": 0.0}), torch.Generator().manual_seed(1))
    some = augment(x, cfg.model_copy(update={"blur_prob": 0.5}), torch.Generator().manual_seed(1))
    changed = (none - some).flatten(1).abs().amax(1) > 1e-6
    assert 0 < int(changed.sum()) < 64  # some images blurred, not all


def test_bf16_autocast_training_is_deterministic_on_cpu():
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, amp_dtype, train_ssl

    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    cfg = TrainConfig(steps=3, batch_size=8, log_every=1, precision="bf16", radreg_weight=0.1)
    assert amp_dtype(cfg, torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(TrainConfig(), torch.device("cpu")) is None  # "auto": bf16 on CUDA only

    def once() -> list:
        torch.manual_seed(0)
        return train_ssl(build_method("simclr", build_encoder("tiny", in_channels=1, width=4)), x, cfg).losses

    first = once()
    assert first == once() and len(first) == 3
