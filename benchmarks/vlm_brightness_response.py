#!/usr/bin/env python
"""How strongly does a tiny VLM's brightness answer pull an image brighter -- on the photos
`make demo-vlm` trains on, as the demo asks it (docs/vlm.md, "why a routed model's brightness
run does not brighten")?

    PYTHONPATH=. python benchmarks/vlm_brightness_response.py [--model_id tiny-vlm-photo]
        [--calibrations pmi_null none]

``--model_id``: a shipped name (``tiny-vlm-photo``) or a folder written by
``python -m alignprop.pretrain_tiny_vlm``. For each calibration and each image set -- the
four held-out photos area-resized to 64 px, and the base outputs of ``tiny-photo`` on
`make demo-vlm`'s training photos (diffusers' pipeline, the demo's size, steps and prompt:
what the LoRA starts from) -- it prints for the ``single`` brightness question (expected
digit / 9, the demo's reward term before its weight), means over the images:

* ``score``: the level (near 0 or 1 the expected digit has little room left);
* ``p_top``: the probability of the most likely digit (a saturated answer is near 1);
* ``digit sd``: the answer's spread in digits; the expected digit's derivative in any logit
  is p_k (k - E), so a confident answer (sd near 0) passes back almost no gradient;
* ``slope x1.1`` / ``slope gamma``: finite-difference response to a real brightening, the
  change of the score over the change of mean luma for ``clamp(1.1 x)`` and ``x ** 0.8``;
* ``d score / d offset``: the analytic gradient's sum over every pixel and channel, i.e. the
  derivative for adding the same offset to every value (what a uniform brightening earns);
* ``|grad|``: the gradient's L2 norm (what the optimiser sees, in any direction);
* ``cos luma`` and ``within-patch``: the cosine with the luma direction and the energy share
  left after removing each patch's mean (benchmarks/vlm_gradient_shift.py).

Deterministic (pipeline seed 1; one torch thread); about 15 s on this CPU.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alignprop import tiny_vlm_data as data  # noqa: E402
from alignprop.config import TrainConfig  # noqa: E402
from alignprop.demo import HELD_OUT, SIZE, edit_with_pipeline  # noqa: E402
from alignprop.demo_vlm import CALIBRATION, PHOTOS  # noqa: E402
from alignprop.models import TINY_PHOTO, load_kontext_pipeline  # noqa: E402
from benchmarks.vlm_gradient_shift import (LUMA, direction_cosine, resized,  # noqa: E402
                                           scores_and_gradient, within_patch_share)
from rewards.vlm import make_vlm_reward  # noqa: E402
from rewards.vlm_named import vlm_names  # noqa: E402
from rewards.vlm_shift import patch_size  # noqa: E402

QUESTION = "brightness"


def check_model_id(value: str) -> str:
    """A shipped VLM name or a folder holding a config.json (else a one-line error)."""
    if value in vlm_names() or (Path(value) / "config.json").is_file():
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is neither a shipped VLM name ({', '.join(vlm_names())}) nor a folder "
        f"with a config.json")


@torch.no_grad()
def base_outputs(names) -> torch.Tensor:
    """tiny-photo's edit of ``names`` without a LoRA (pipeline seed 1, as the demo's checks)."""
    pipe = load_kontext_pipeline(TINY_PHOTO)
    return edit_with_pipeline(pipe, resized(names, SIZE), TrainConfig.prompt)


def measure(model_id: str, calibration: str, images: torch.Tensor) -> dict:
    reward = make_vlm_reward("single", model_id=model_id, dtype="float32", device="cpu",
                             prompt=data.QUESTIONS[QUESTION], calibration=calibration,
                             model_flag="--model_id")
    p = patch_size(reward.bundle.model.config)
    s0, g = scores_and_gradient(reward, images)
    luma = partial(data.statistic, QUESTION)     # mean luma, the statistic demo-vlm checks
    with torch.no_grad():
        l0 = luma(images)
        slopes = {}
        for name, bright in (("x1.1", (images * 1.1).clamp(0, 1)), ("gamma", images ** 0.8)):
            slopes[name] = ((reward(bright)[0] - s0) / (luma(bright) - l0)).mean().item()
        probs = digit_probs(reward, images)
    digits = torch.arange(probs.shape[-1], dtype=probs.dtype)
    mean = (probs * digits).sum(-1, keepdim=True)
    sd = (probs * (digits - mean) ** 2).sum(-1).sqrt()
    return {"score": s0.mean().item(), "p_top": probs.max(-1).values.mean().item(),
            "digit_sd": sd.mean().item(),
            "slope_x1.1": slopes["x1.1"], "slope_gamma": slopes["gamma"],
            "d_offset": g.sum((1, 2, 3)).mean().item(),
            "grad_norm": g.flatten(1).norm(dim=1).mean().item(),
            "cos_luma": direction_cosine(g, LUMA).mean().item(),
            "within_patch": within_patch_share(g, p).mean().item()}


def digit_probs(reward, images: torch.Tensor) -> torch.Tensor:
    """(B, K) answer distribution behind the score, after calibration."""
    return reward.score_slots(reward.slots_for(images, None)).probs[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/vlm_brightness_response.py",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--model_id", type=check_model_id, default="tiny-vlm-photo",
                    help="shipped VLM name or a pretrain_tiny_vlm output folder")
    ap.add_argument("--calibrations", nargs="+", choices=("pmi_null", "none"),
                    default=[CALIBRATION, "none"],
                    help=f"calibrations of the answer to measure (default {CALIBRATION} none; "
                         f"{CALIBRATION} is demo-vlm's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sets = {"held-out 64 px": resized(HELD_OUT, 64), "demo base outputs": base_outputs(PHOTOS)}
    print(f"{args.model_id}: single '{data.QUESTIONS[QUESTION]}'; held-out: "
          f"{', '.join(HELD_OUT)}; demo training photos: {', '.join(PHOTOS)} ({SIZE} px, "
          f"tiny-photo base outputs)")
    print("| calibration | images | score | p_top | digit sd | slope x1.1 | slope gamma | d score / d offset "
          "| \\|grad\\| | cos luma | within-patch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cal in args.calibrations:
        for name, images in sets.items():
            m = measure(args.model_id, cal, images)
            print(f"| {cal} | {name} | {m['score']:.3f} | {m['p_top']:.3f} | {m['digit_sd']:.2f} | "
                  f"{m['slope_x1.1']:+.3f} | {m['slope_gamma']:+.3f} | {m['d_offset']:+.3f} | "
                  f"{m['grad_norm']:.3f} | {m['cos_luma']:+.3f} | {m['within_patch']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
