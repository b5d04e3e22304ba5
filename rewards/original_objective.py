"""The original trainer's brightness, crispness and grid terms (``--semantics original``).

As the original's reward function computed them (docs/original_mode.md; values checked against
its own code in ``tests/data/original_reference.json``):

* the output is first resized to ``eval_resize x eval_resize`` (bilinear, no antialias; the
  aspect ratio is not kept) when its size differs (0 = keep);
* each penalty is the mean over the batch: every sample gets the same penalty, and its gradient
  reaches every image of the batch;
* brightness: mean linear-light luminance, linear hinge outside ``target +/- band``;
* crispness: ``0.25 * relu(1.5e-3 - E)``, E the mean squared 3x3 Sobel response (not
  normalised, zero padding) of the linear-light luminance: at most 3.75e-4, and 0 for any
  image bright enough that the zero padding makes its border an edge;
* grid: :func:`rewards.anti_periodic_original.trainer_grid_penalty`.

Rewards are ``-penalty`` (B,), like every reward of :mod:`rewards`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .anti_periodic_original import linear_luminance, sobel, trainer_grid_penalty
from .base import as_reward, batch_mean, check_images

CRISPNESS_FLOOR = 1.5e-3
CRISPNESS_SCALE = 0.25


def eval_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,H,W) -> (B,3,size,size) as the original did (no resize when size is 0 or equal)."""
    if not size or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _prepare(images: torch.Tensor, size: int) -> torch.Tensor:
    check_images(images)
    return eval_resize(images.float().clamp(0, 1), size)


def brightness_penalty(images: torch.Tensor, target: float = 0.50, band: float = 0.06,
                       size: int = 512) -> torch.Tensor:
    """0-dim batch mean of the linear hinge on mean linear-light luminance."""
    m = linear_luminance(_prepare(images, size), clamp=False).mean(dim=(-2, -1))
    return (F.relu((target - band) - m) + F.relu(m - (target + band))).mean()


def sobel_energy(images: torch.Tensor, size: int = 512) -> torch.Tensor:
    """[B] mean of gx^2 + gy^2 over the linear-light luminance (zero padding)."""
    gx, gy = sobel(linear_luminance(_prepare(images, size), clamp=False))
    return (gx * gx + gy * gy).mean(dim=(-1, -2))


def crispness_penalty(images: torch.Tensor, size: int = 512) -> torch.Tensor:
    """0-dim batch mean of ``0.25 * relu(1.5e-3 - sobel_energy)``."""
    return F.relu(CRISPNESS_FLOOR - sobel_energy(images, size)).mean() * CRISPNESS_SCALE


def grid_penalty(images: torch.Tensor, period: int = 16, max_harm: int = 3,
                 size: int = 512) -> torch.Tensor:
    """0-dim batch mean of the original trainer's grid penalty."""
    return trainer_grid_penalty(_prepare(images, size), period, max_harm).mean()


def _check_size(size) -> int:
    if not isinstance(size, int) or size < 0 or 0 < size < 16:
        raise ValueError(f"eval_resize must be 0 (native size) or an int >= 16, got {size!r}")
    return size


def make_original_brightness(target: float = 0.50, band: float = 0.06, eval_resize: int = 512):
    """The original trainer's brightness anchor; metrics ``penalty``, ``mean_luminance``."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"brightness target must be in [0, 1], got {target}")
    if not (band >= 0 and math.isfinite(band)):
        raise ValueError(f"brightness band must be >= 0, got {band}")
    size = _check_size(eval_resize)

    def reward(images, inputs=None, prompts=None):
        pen = brightness_penalty(images, target, band, size)
        with torch.no_grad():
            lum = batch_mean(linear_luminance(_prepare(images, size), clamp=False))
        return -pen.expand(images.shape[0]), {"penalty": batch_mean(pen), "mean_luminance": lum}

    return as_reward(reward)


def make_original_crispness(eval_resize: int = 512):
    """The original trainer's crispness anchor; metrics ``penalty``, ``sobel_energy``."""
    size = _check_size(eval_resize)

    def reward(images, inputs=None, prompts=None):
        energy = sobel_energy(images, size)
        pen = F.relu(CRISPNESS_FLOOR - energy).mean() * CRISPNESS_SCALE
        return -pen.expand(images.shape[0]), {"penalty": batch_mean(pen),
                                              "sobel_energy": batch_mean(energy)}

    return as_reward(reward)


def make_original_grid(period: int = 16, max_harm: int = 3, eval_resize: int = 512):
    """The original trainer's grid penalty; metric ``penalty``."""
    if not isinstance(period, int) or period < 2:
        raise ValueError(f"grid period must be an int >= 2 px, got {period!r}")
    if not isinstance(max_harm, int) or max_harm < 1:
        raise ValueError(f"max_harm must be an int >= 1, got {max_harm!r}")
    size = _check_size(eval_resize)

    def reward(images, inputs=None, prompts=None):
        pen = grid_penalty(images, period, max_harm, size)
        return -pen.expand(images.shape[0]), {"penalty": batch_mean(pen)}

    return as_reward(reward)


__all__ = ["brightness_penalty", "crispness_penalty", "grid_penalty", "sobel_energy", "eval_resize",
           "make_original_brightness", "make_original_crispness", "make_original_grid"]
