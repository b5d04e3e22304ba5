#!/usr/bin/env python
"""How much of the VLM reward's pixel gradient is locked to the vision patches, with and
without shift views (``--internvl_shift_views``, rewards/vlm_shift.py)?

    PYTHONPATH=. python benchmarks/vlm_gradient_shift.py [--views 1 4 16] [--size 64]

On the four held-out photos of the demos (area-resized to ``--size``), for the `single`
questions of ``tiny-vlm-photo`` (brightness, warmth; calibration pmi_null, as `make demo-vlm`
asks), it prints per view count and question:

* the score of each photo (the ranking must stay: the views average the same answer);
* cos(gradient, luma direction): the cosine of each photo's pixel gradient with the uniform
  brightening direction (0.2126, 0.7152, 0.0722 on every pixel) -- how much of the gradient
  is "make the whole photo brighter" (for the warmth question: with the R - B direction);
* the within-patch share: the fraction of the gradient energy left after subtracting each
  P x P block's mean (P = the model's vision patch) -- 1 - 1/P^2 for white noise, 0 for a
  gradient constant on each patch;
* the folded energy: gradient energy summed over channels, averaged over photos, folded by
  (y mod P, x mod P) and divided by its mean; max and min (1 / 1 when no phase stands out).

Deterministic (no sampling; one torch thread); seconds on a CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alignprop import tiny_vlm_data as data  # noqa: E402
from alignprop.demo import HELD_OUT  # noqa: E402
from common.cli import positive_int  # noqa: E402
from common.photos import photo_tensor  # noqa: E402
from rewards.vlm import make_vlm_reward  # noqa: E402
from rewards.vlm_shift import patch_size, views_arg  # noqa: E402

LUMA = (0.2126, 0.7152, 0.0722)
R_MINUS_B = (1.0, 0.0, -1.0)
DIRECTIONS = {"brightness": ("luma", LUMA), "warmth": ("R-B", R_MINUS_B)}


def resized(names, size: int) -> torch.Tensor:
    """The bundled photos ``names`` area-resized to ``size`` x ``size``, as one batch."""
    return torch.stack([F.interpolate(photo_tensor(n)[None], size=(size, size),
                                      mode="area")[0] for n in names])


def scores_and_gradient(reward, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward's (B,) scores of ``images`` and the pixel gradient of their sum."""
    x = images.clone().requires_grad_(True)
    scores = reward(x)[0]
    g, = torch.autograd.grad(scores.sum(), x)
    return scores.detach(), g


def within_patch_share(g: torch.Tensor, p: int) -> torch.Tensor:
    """Per image: energy of g minus its P x P block means, over the energy of g."""
    blocks = F.interpolate(F.avg_pool2d(g, p), scale_factor=p, mode="nearest")
    return (g - blocks).pow(2).sum((1, 2, 3)) / g.pow(2).sum((1, 2, 3))


def folded_energy(g: torch.Tensor, p: int) -> torch.Tensor:
    """(P, P) gradient energy by (y mod P, x mod P), over its mean."""
    e = g.pow(2).sum(1).mean(0)
    h, w = e.shape
    f = e[: h // p * p, : w // p * p].reshape(h // p, p, w // p, p).mean((0, 2))
    return f / f.mean()


def direction_cosine(g: torch.Tensor, rgb: tuple) -> torch.Tensor:
    d = torch.tensor(rgb, dtype=g.dtype).view(1, 3, 1, 1).expand_as(g)
    return (g * d).sum((1, 2, 3)) / g.flatten(1).norm(dim=1) / d[0].norm()


def measure(views: int, question: str, images: torch.Tensor) -> dict:
    reward = make_vlm_reward("single", model_id="tiny-vlm-photo", dtype="float32", device="cpu",
                             prompt=data.QUESTIONS[question], calibration="pmi_null",
                             shift_views=views)
    p = patch_size(reward.bundle.model.config)
    scores, g = scores_and_gradient(reward, images)
    fold = folded_energy(g, p)
    return {"scores": scores.tolist(),
            "cosine": direction_cosine(g, DIRECTIONS[question][1]).tolist(),
            "within_patch": within_patch_share(g, p).tolist(),
            "fold_max": float(fold.max()), "fold_min": float(fold.min()), "patch": p}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=views_arg, nargs="+", default=[1, 4, 16],
                    help="view counts to compare (1 or k*k)")
    ap.add_argument("--size", type=positive_int, default=64, help="photo side in pixels")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    images = resized(HELD_OUT, args.size)
    print(f"held-out photos: {', '.join(HELD_OUT)} ({args.size} px); tiny-vlm-photo, single, "
          f"pmi_null")
    print("| views | question | scores | cos(grad, direction) | within-patch share | "
          "folded energy max / min |")
    print("|---|---|---|---|---|---|")
    for v in args.views:
        for question in DIRECTIONS:
            m = measure(v, question, images)

            def fmt(xs):
                return " ".join(f"{x:.3f}" for x in xs)

            print(f"| {v} | {question} | {fmt(m['scores'])} | {DIRECTIONS[question][0]}: "
                  f"{fmt(m['cosine'])} | {fmt(m['within_patch'])} | {m['fold_max']:.2f} / "
                  f"{m['fold_min']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
