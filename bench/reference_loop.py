"""Our SimCLR step vs a plain reference loop written the way popular SSL libraries do it:
per-sample PIL augmentation (RandomResizedCrop-like crop+resize, rotation, flip, ColorJitter-like
ImageEnhance, GaussianBlur via ImageFilter) in torch DataLoader workers, fp32, same model, same
device, same process. (torchvision does not import here, so the transforms are written with PIL.)
"""

from __future__ import annotations

import math
import os
import random
import tempfile

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, Dataset

from bench.ceiling import CPU_CASES, GPU_CASES, Case, build, real_step_ips
from bench.common import device_name, make_dataset, now, sync, table


class PILTwoViews(Dataset):
    """``images``: uint8 ``(N, C, H, W)`` → per item two float views ``(C, H, W)`` in [0, 1]."""

    def __init__(self, images: torch.Tensor, crop_scale_min: float = 0.5, max_rotation_deg: float = 15.0,
                 hflip: float = 0.0, brightness: float = 0.4, contrast: float = 0.4, blur_prob: float = 0.3,
                 noise_std: float = 0.05):
        self.arr = images.permute(0, 2, 3, 1).numpy()
        self.size = images.shape[-1]
        self.p = dict(crop_scale_min=crop_scale_min, max_rotation_deg=max_rotation_deg, hflip=hflip,
                      brightness=brightness, contrast=contrast, blur_prob=blur_prob, noise_std=noise_std)

    def __len__(self) -> int:
        return len(self.arr)

    def _view(self, img: Image.Image) -> torch.Tensor:
        p, w, h = self.p, img.width, img.height
        for _ in range(10):  # RandomResizedCrop's sampling
            area = w * h * random.uniform(p["crop_scale_min"], 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
                break
        else:
            x0, y0, cw, ch = 0, 0, w, h
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        img = img.rotate(random.uniform(-p["max_rotation_deg"], p["max_rotation_deg"]), Image.BILINEAR)
        if random.random() < p["hflip"]:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(random.uniform(1 - p["brightness"], 1 + p["brightness"]))
        img = ImageEnhance.Contrast(img).enhance(random.uniform(1 - p["contrast"], 1 + p["contrast"]))
        if random.random() < p["blur_prob"]:
            img = img.filter(ImageFilter.GaussianBlur(radius=0.8))
        a = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(a[:, :, None] if a.ndim == 2 else a).permute(2, 0, 1)
        return (t + p["noise_std"] * torch.randn_like(t)).clamp_(0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.arr[i]
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        return self._view(img), self._view(img)


def _seed_worker(worker_id: int) -> None:
    random.seed(torch.initial_seed() % 2**32)


def reference_ips(case: Case, images: torch.Tensor, workers: int, warmup: int = 2, steps: int = 8) -> float:
    """img/s of the reference loop: DataLoader workers + fp32 forward/backward/AdamW."""
    device = torch.device(case.device)
    method = build(case).to(device).train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-5)
    loader = DataLoader(PILTwoViews(images), batch_size=case.batch, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=_seed_worker,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    done, t0 = 0, 0.0
    while done < warmup + steps:
        for x1, x2 in loader:
            if done == warmup:
                sync(device)
                t0 = now()
            if done == warmup + steps:
                break
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            loss, _ = method.loss(x1, x2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    sync(device)
    return steps * case.batch / (now() - t0)


def default_workers(device: str) -> int:
    cpus = os.cpu_count() or 1
    return min(8, cpus) if device == "cuda" else cpus


HEADERS = ["case", "device", "ours: train_ssl img/s", "reference: PIL + DataLoader workers, fp32, img/s", "workers",
           "ours ÷ reference"]


def run(cases: list[Case] | None = None, *, workers: int | None = None, warmup: int = 2, steps: int = 8) -> str:
    from uft.data.dataset import load_dataset

    out = []
    for case in cases if cases is not None else CPU_CASES + GPU_CASES:
        if case.device == "cuda" and not torch.cuda.is_available():
            out.append([case.name, "-", "skipped: no GPU", "-", "-", "-"])
            continue
        nw = default_workers(case.device) if workers is None else workers
        with tempfile.TemporaryDirectory() as tmp:
            uri = make_dataset(tmp, case.n_images, case.size, case.channels)
            ref = reference_ips(case, load_dataset(uri).images, nw, warmup, steps)
            ours = real_step_ips(case, uri, warmup, steps)[0]
        out.append([case.name, device_name(case.device), ours, ref, nw, ours / ref])
    return "## Reference loop\n\n" + table(HEADERS, out)


if __name__ == "__main__":
    print(run())
