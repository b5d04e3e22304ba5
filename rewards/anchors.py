"""Anchors that keep reward optimisation honest: a brightness band and a crispness floor.

* Brightness: mean Rec.709 luma (of the gamma-encoded [0,1] values) must stay within
  ``target +/- band``; outside, a squared hinge (default) or linear hinge grows. Exactly
  zero inside the band, so the anchor never fights the other rewards there.
  ``space="linear"`` measures linear-light luminance instead (sRGB decoded first); with
  ``hinge="linear"`` that is the original project's anchor.
* Crispness: Tenengrad, the mean squared Sobel gradient magnitude of the luma, measured at
  a fixed long side (``eval_resize``) so the floor does not depend on the output size.
  Penalty = relu(1 - tenengrad / floor): 0 for images at least as crisp as the floor,
  1 for a flat image. The default floor comes from scikit-image's bundled photos
  (docs/anti_grid.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import as_reward, batch_mean, check_images
from .grid import _resize_long_side, luminance

HINGES = ("squared", "linear")
# "gamma": Rec.709 weights on the gamma-encoded values (luma, ours); "linear": the same
# weights on linear-light values (relative luminance Y), as the original project measured.
SPACES = ("gamma", "linear")
# Measured on the 18 bundled scikit-image photos at a 512-px long side (docs/anti_grid.md):
# median Tenengrad 2.1e-3, moon 1.6e-4, the low-texture clock/cell 4e-5/7e-5; a Gaussian blur
# of sigma 2 px divides it by about 4. The floor is a guard against collapse into blur or
# flat images (about 1/20 of a typical photo), not a per-image sharpness judge.
DEFAULT_CRISPNESS_FLOOR = 1.0e-4


def srgb_to_linear(images: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 sRGB decoding of [0,1] values (differentiable)."""
    x = images.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


def mean_brightness(images: torch.Tensor, space: str = "gamma") -> torch.Tensor:
    """[B] mean luma ("gamma") or mean linear-light luminance ("linear")."""
    if space not in SPACES:
        raise ValueError(f"unknown brightness space {space!r}; use one of {', '.join(SPACES)}")
    x = srgb_to_linear(images) if space == "linear" else images
    return luminance(x).mean(dim=(-2, -1))


def brightness_penalty(images: torch.Tensor, target: float = 0.45, band: float = 0.08,
                       hinge: str = "squared", space: str = "gamma") -> torch.Tensor:
    """[B] hinge on mean luma (or luminance) outside ``target +/- band`` (exactly 0 inside)."""
    check_images(images)
    mean = mean_brightness(images, space)
    excess = torch.relu((mean - target).abs() - band)
    return excess ** 2 if hinge == "squared" else excess


def tenengrad(images: torch.Tensor, eval_resize: int | None = 512) -> torch.Tensor:
    """[B] mean squared Sobel gradient magnitude of the luma (intensity per pixel squared)."""
    check_images(images)
    x = _resize_long_side(images, eval_resize, allow_upscale=True)
    lum = luminance(x)[:, None]
    k = lum.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    kernels = torch.stack([k, k.t()])[:, None]                     # (2,1,3,3): d/dx, d/dy
    g = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), kernels)
    return (g ** 2).sum(1).mean(dim=(-2, -1))


def crispness_penalty(images: torch.Tensor, floor: float = DEFAULT_CRISPNESS_FLOOR,
                      eval_resize: int | None = 512) -> torch.Tensor:
    """[B] relu(1 - tenengrad/floor): 0 when crisp enough, up to 1 for a flat image."""
    return torch.relu(1.0 - tenengrad(images, eval_resize) / floor)


def make_brightness_anchor(target: float = 0.45, band: float = 0.08, hinge: str = "squared",
                           space: str = "gamma"):
    """Reward = -brightness penalty; metrics ``brightness_penalty`` and ``mean_luma``.

    ``space="linear", hinge="linear"`` is the original project's anchor (linear-light
    luminance, linear hinge); the metric is then the mean luminance it is measured on.
    """
    if not (0.0 <= target <= 1.0):
        raise ValueError(f"brightness target must be in [0, 1], got {target}")
    if not (band >= 0.0 and math.isfinite(band)):
        raise ValueError(f"brightness band must be >= 0, got {band}")
    if hinge not in HINGES:
        raise ValueError(f"unknown hinge {hinge!r}; use one of {', '.join(HINGES)}")
    if space not in SPACES:
        raise ValueError(f"unknown brightness space {space!r}; use one of {', '.join(SPACES)}")

    def brightness_reward(images, inputs=None, prompts=None):
        pen = brightness_penalty(images, target, band, hinge, space)
        with torch.no_grad():
            luma = batch_mean(mean_brightness(images, space))
        return -pen, {"brightness_penalty": batch_mean(pen), "mean_luma": luma}

    return as_reward(brightness_reward)


def make_crispness_floor(floor: float = DEFAULT_CRISPNESS_FLOOR, eval_resize: int | None = 512):
    """Reward = -crispness penalty; metrics ``crispness_penalty`` and ``tenengrad``."""
    if not (floor > 0 and math.isfinite(floor)):
        raise ValueError(f"crispness floor must be a positive number, got {floor}")
    if eval_resize not in (None, 0) and eval_resize < 16:
        raise ValueError(f"eval_resize must be >= 16 (or 0/None for native size), got {eval_resize}")

    def crispness_reward(images, inputs=None, prompts=None):
        t = tenengrad(images, eval_resize)
        pen = torch.relu(1.0 - t / floor)
        return -pen, {"crispness_penalty": batch_mean(pen), "tenengrad": batch_mean(t)}

    return as_reward(crispness_reward)


__all__ = ["DEFAULT_CRISPNESS_FLOOR", "brightness_penalty", "mean_brightness", "srgb_to_linear", "crispness_penalty",
           "make_brightness_anchor", "make_crispness_floor", "tenengrad"]
