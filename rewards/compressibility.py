"""JPEG compressibility: the no-gradient reward of DDPO and D3PO.

Each image is quantised to 8 bits, saved as JPEG at quality 95 with PIL and measured;
reward = -(file size in kB, 1 kB = 1000 bytes), so higher means more compressible (smoother,
fewer details). Checked against D3PO's ``d3po_pytorch/rewards.py`` (yk7333/d3po), which
takes it from DDPO: ``(x * 255).round().clamp(0, 255)`` to uint8, PIL JPEG quality 95,
``size / 1000``, negated for compressibility. No gradient: ``differentiable = False``.
"""
from __future__ import annotations

import io

import torch

from .base import check_images


class JpegCompressibility:
    """Reward = -JPEG size in kB at ``quality`` (metric ``kb``: the mean size)."""

    differentiable = False

    def __init__(self, quality: int = 95):
        if not (isinstance(quality, int) and 1 <= quality <= 100):
            raise ValueError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
        self.quality = quality

    def sizes_kb(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        check_images(images)
        pixels = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
        sizes = []
        for arr in pixels.permute(0, 2, 3, 1).cpu().numpy():
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell() / 1000)
        return torch.tensor(sizes, dtype=torch.float32, device=images.device)

    def __call__(self, images, inputs=None, prompts=None):
        kb = self.sizes_kb(images)
        return -kb, {"kb": kb.mean().item()}


def make_jpeg_compressibility_reward(quality: int = 95) -> JpegCompressibility:
    return JpegCompressibility(quality)


__all__ = ["JpegCompressibility", "make_jpeg_compressibility_reward"]
