#!/usr/bin/env python
"""Parity of the differentiable VLM preprocessing with each family's official image processor.

For every built-in tiny model (same processor classes and code paths as the real checkpoints;
only the sizes are small) and 4 photos shipped with scikit-image (chelsea, astronaut, coffee,
rocket) at 90x160, 300x200 and 512x512, prints the max and mean
absolute difference of our torch pixel values from the processor's, in normalised units, and
the score difference against a hand computation from the model's logits on the processor's
own inputs (single task, digits, expected objective; this gap includes the pixel rounding).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/vlm_parity.py [--models tiny tiny-qwen2.5-vl]

Why not exactly 0: the processors resize 8-bit images and round the result; we resize floats so
gradients reach the pixels. Where no resize is needed the difference is 0 (up to float error).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
SIZES = ((90, 160), (300, 200), (512, 512))


def photo(name: str, h: int, w: int) -> np.ndarray:
    from PIL import Image
    from skimage import data
    return np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB").resize((w, h),
                                                                                 Image.BICUBIC))


def processor_pixels(bundle, arr):
    from PIL import Image
    kw = {"crop_to_patches": False} if bundle.family.name == "InternVL3" else {}
    return bundle.processor.image_processor(images=[Image.fromarray(arr)], return_tensors="pt",
                                            **kw)["pixel_values"]


def score_gap(bundle, reward, arr) -> float:
    from PIL import Image
    kw = {"crop_to_patches": False} if bundle.family.name == "InternVL3" else {}
    inputs = bundle.processor(images=[Image.fromarray(arr)], text=[reward.prompt_template],
                              return_tensors="pt", **kw)
    with torch.no_grad():
        logp = bundle.model(**inputs).logits[0, -1].float().log_softmax(-1)
        lp = torch.stack([logp[ids].logsumexp(0) for ids in reward.answer_ids])
        hand = (lp.softmax(0) * torch.arange(10.0)).sum() / 9
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
        ours = reward(x)[0][0]
    return abs(float(ours - hand))


def main() -> None:
    from rewards.vlm import make_vlm_reward
    from rewards.vlm_families import tiny_names

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "tiny-qwen2.5-vl", "tiny-qwen3-vl"],
                   choices=tiny_names())
    args = p.parse_args()
    torch.manual_seed(0)
    print("| model | family | chelsea 90x160: max / mean abs diff | all 12 photo x size: max / "
          "mean abs diff | max score gap |")
    print("|---|---|---|---|---|")
    for model_id in args.models:
        reward = make_vlm_reward("single", model_id=model_id, dtype="float32", device="cpu")
        bundle = reward.bundle
        worst, means, gaps, first = 0.0, [], [], None
        for name in PHOTOS:
            for h, w in SIZES:
                arr = photo(name, h, w)
                ref = processor_pixels(bundle, arr)
                x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
                with torch.no_grad():
                    ours = reward._prepare(x).pixels.reshape(ref.shape)
                diff = (ours - ref).abs()
                first = first or (diff.max().item(), diff.mean().item())
                worst = max(worst, diff.max().item())
                means.append(diff.mean().item())
                gaps.append(score_gap(bundle, reward, arr))
        print(f"| {model_id} | {bundle.family.name} | {first[0]:.4f} / {first[1]:.4f} | "
              f"{worst:.4f} / {np.mean(means):.4f} | {max(gaps):.1e} |")


if __name__ == "__main__":
    main()
