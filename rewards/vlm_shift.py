"""Shift averaging of a VLM reward: the score averaged over views translated by sub-patch offsets.

A vision transformer cuts the image into ``P`` x ``P`` patches at fixed positions, so the
pixel gradient of its answer is locked to that grid: on ``tiny-vlm-photo`` (P = 8) 85-91 % of
the gradient energy of the brightness answer lies within 8-px blocks rather than in their
means (``benchmarks/vlm_gradient_shift.py``, docs/vlm.md). A LoRA that follows such a gradient
is pushed toward patch-periodic texture. Averaging the reward over translated copies of the
image (an expectation over transformations, as CLIP guidance averages over random "cutouts")
averages the grid-locked part of the gradient over the patch phases, while what does not
depend on the phase (a global tone) is kept.

Views: ``k * k`` views (``views`` must be a square), offsets ``round(j * P / k)`` for
``j = 0 .. k-1`` in y and in x, so the views cover the patch phases evenly and include the
image itself (offset 0). ``k = 2``: phases 0 and half a patch in each axis (4 views).

The offsets are fixed, not drawn: M views cost M rows through the model, but the reward stays
a deterministic function of the pixels (the same score on a resume, in a test, in the
scorer) and draws nothing from any random stream (the trainer derives every random number
from its seed and the step, ``seed_for``; a reward that drew its own would need a seed of its
own to resume exactly).

A translation is reflect padding at the top and left by the offset, then cropping back to the
image size (differentiable; the strip that enters is the mirror image of the border, so no new
edge appears). ``torch.roll`` would bring the opposite border in with a seam (a sharp edge the
VLM sees and a brightness answer may read); zero or constant padding would add a dark or grey
band, which changes the brightness and colour answers by itself.

``P`` is the vision patch of the model's config (``vision_config.patch_size``: 8 for the tiny
InternVL models, 14 for InternVL3 and Qwen2.5-VL, 16 for Qwen3-VL), in the pixels the vision
tower sees. Qwen-VL resizes an image only to the nearest multiple of 28 / 32 px, so that is
close to image pixels; InternVL resizes each tile to its tile size (448 for InternVL3), so on a
much larger or smaller image the grid in image pixels is P times (image / tile) -- the offsets
are then not exact half-patch phases, though they still move the image against the grid.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

import torch
import torch.nn.functional as F


def check_views(views: Any, what: str = "shift_views") -> int:
    """``views`` as an int: 1 (no averaging) or a square k*k (ValueError otherwise)."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 1 \
            or math.isqrt(views) ** 2 != views:
        raise ValueError(f"{what} must be 1 (off) or a square number of views k*k "
                         f"(4, 9, 16, ...: k offsets per axis), got {views!r}")
    return views


def views_arg(s: str) -> int:
    """argparse ``type=`` for a view-count flag (argparse's one-line usage error names the
    flag)."""
    try:
        return check_views(int(s), "the view count")
    except ValueError as exc:      # int() of a non-number, or not 1 / a square
        raise argparse.ArgumentTypeError(str(exc) if "view count" in str(exc)
                                         else f"must be an integer, got {s!r}") from None


def patch_size(model_config: Any) -> int:
    """The vision patch (pixels) of a VLM's config: ``vision_config.patch_size`` (int or a pair
    of equal sides)."""
    vision = getattr(model_config, "vision_config", None)
    p = getattr(vision, "patch_size", None)
    if isinstance(p, (list, tuple)):
        if len(set(p)) != 1:
            raise ValueError(f"shift views need a square vision patch, the config has {list(p)}")
        p = p[0]
    if not isinstance(p, int) or p < 1:
        raise ValueError(f"the model's config gives no vision patch size (vision_config."
                         f"patch_size = {p!r}); shift views need it")
    return p


def shift_offsets(views: int, patch: int) -> list[tuple[int, int]]:
    """The (dy, dx) of each view, row-major: k offsets ``round(j * patch / k)`` per axis."""
    k = math.isqrt(check_views(views))
    if k > patch:
        raise ValueError(f"shift_views {views} asks for {k} offsets per axis, more than the "
                         f"model's {patch}-px vision patch has phases (at most {patch * patch} "
                         f"views)")
    axis = [round(j * patch / k) for j in range(k)]
    return [(dy, dx) for dy in axis for dx in axis]


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B,3,H,W) moved down by ``dy`` and right by ``dx`` pixels, reflect padding the strip that
    enters; the same size, differentiable."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    if dy >= h or dx >= w:
        raise ValueError(f"a {h}x{w} image cannot be shifted by ({dy}, {dx}) px with reflect "
                         f"padding (the shift must be smaller than the image)")
    return F.pad(x, (dx, 0, dy, 0), mode="reflect")[..., :h, :w]


def shifted_batch(x: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """The views of ``x`` stacked view-major: rows ``v * B .. (v + 1) * B - 1`` are view v."""
    return torch.cat([translate(x, dy, dx) for dy, dx in offsets])


__all__ = ["check_views", "patch_size", "shift_offsets", "shifted_batch", "translate",
           "views_arg"]
