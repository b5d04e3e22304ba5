"""How varied are the outputs for one input across seeds? (mode-collapse check)

Reward fine-tuning is known to collapse diversity: every seed drifts to the same
high-reward picture. For each input we take its outputs under several seeds and
report the mean pairwise distance between them (0 = all seeds give the same image).

Metrics (``metric=``):

* ``lpips`` -- mean pairwise LPIPS distance (perceptual; the usual choice). Uses
  the project's :func:`rewards.perceptual.build_lpips_model` (backbone from the
  torchvision weight file, never downloaded) and falls back to the ``lpips``
  package. ``pretrained=False`` uses a random backbone: only for tests.
* ``l2``    -- mean pairwise root-mean-square pixel difference (images in [0,1]).
* ``ssim``  -- mean pairwise ``1 - SSIM`` (grey-level structural similarity).

All images are resized (bilinear, antialiased) to ``resolution`` x ``resolution``
first, so inputs of any size weigh the same.

Folder layouts accepted by :func:`group_seed_outputs`:

1. per-seed subfolders: ``DIR/seed0/cat.png, DIR/seed1/cat.png, ...`` (any
   subfolder names; files are grouped by stem across subfolders);
2. flat, with a seed suffix: ``DIR/cat_seed0.png, DIR/cat_seed1.png`` (what
   ``python -m alignprop.generate --num_seeds N`` writes).
"""
from __future__ import annotations

import itertools
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from common.images import ImageLoadError, list_images, load_image
from rewards.perceptual import build_lpips_model

METRICS = ("lpips", "l2", "ssim")
_SEED_SUFFIX = re.compile(r"^(?P<stem>.+)_seed(?P<seed>\d+)$")


def group_seed_outputs(folder: str | Path) -> tuple[dict[str, list[Path]], str]:
    """Group a folder's images by input name; returns (groups, layout description)."""
    folder = Path(folder).expanduser()
    files = list_images(folder)  # raises for a missing folder
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    sub_files = {d: list_images(d) for d in subdirs}
    sub_files = {d: f for d, f in sub_files.items() if f}
    groups: dict[str, list[Path]] = defaultdict(list)
    flat = [p for p in files if _SEED_SUFFIX.match(p.stem)]
    if flat:
        for p in flat:
            groups[_SEED_SUFFIX.match(p.stem)["stem"]].append(p)
        for g in groups.values():
            g.sort(key=lambda p: int(_SEED_SUFFIX.match(p.stem)["seed"]))
        return dict(groups), "files named <name>_seed<k>"
    if len(sub_files) >= 2:
        for d, paths in sub_files.items():
            for p in paths:
                groups[p.stem].append(p)
        return dict(groups), f"{len(sub_files)} per-seed subfolders"
    raise ValueError(
        f"diversity folder {folder}: found neither files named <name>_seed<k>.png nor two or more "
        "subfolders of images (one per seed); see docs/generate_evaluate.md")


def _prep(images: Sequence[torch.Tensor], resolution: int) -> torch.Tensor:
    x = torch.stack([F.interpolate(im[None].float(), size=(resolution, resolution),
                                   mode="bilinear", antialias=True, align_corners=False)[0]
                     for im in images])
    return x.clamp(0, 1)


def build_metric(metric: str = "lpips", net: str = "alex", pretrained: bool = True,
                 device: str | torch.device = "cpu", backbone_path: str | None = None,
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return ``dist(a, b) -> (N,)`` for batches a, b (N,3,R,R) in [0,1].

    ``backbone_path``: LPIPS trunk weight file (see rewards.perceptual); None = torch hub cache.
    """
    if metric == "l2":
        return lambda a, b: ((a - b) ** 2).flatten(1).mean(1).sqrt()
    if metric == "ssim":
        import numpy as np
        from skimage.metrics import structural_similarity

        def ssim_dist(a, b):
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            ga, gb = (a.cpu() * w).sum(1).numpy(), (b.cpu() * w).sum(1).numpy()
            return torch.tensor([1.0 - structural_similarity(x, y, data_range=1.0)
                                 for x, y in zip(ga.astype(np.float64), gb.astype(np.float64))])
        return ssim_dist
    if metric == "lpips":
        model = build_lpips_model(net, pretrained=pretrained, backbone_path=backbone_path)
        model = model.to(device).requires_grad_(False)

        def lpips_dist(a, b):
            with torch.no_grad():
                return model(a.to(device), b.to(device), normalize=True).flatten().float().cpu()
        return lpips_dist
    raise ValueError(f"unknown diversity metric {metric!r}; use one of {', '.join(METRICS)}")


def pairwise_diversity(images: Sequence[torch.Tensor], dist: Callable, resolution: int = 256) -> float:
    """Mean distance over all unordered pairs of ``images`` ((3,H,W) each, >= 2 of them)."""
    if len(images) < 2:
        raise ValueError("diversity needs at least two images of the same input")
    x = _prep(images, resolution)
    pairs = list(itertools.combinations(range(len(images)), 2))
    i, j = zip(*pairs)
    return float(dist(x[list(i)], x[list(j)]).mean())


def folder_diversity(folder: str | Path, dist: Callable, resolution: int = 256) -> dict:
    """Per-input diversity of one folder (see module docstring for layouts).

    Returns ``{"layout", "per_input": {name: {"n_samples", "diversity"}}, "mean", "std", "n",
    "skipped": [{"name"|"file", "reason"}]}``; inputs with fewer than two readable
    samples are skipped and reported.
    """
    import statistics


    groups, layout = group_seed_outputs(folder)
    per_input, skipped = {}, []
    for name in sorted(groups):
        imgs = []
        for p in groups[name]:
            try:
                imgs.append(load_image(p))
            except ImageLoadError as exc:
                skipped.append({"file": str(p), "reason": str(exc)})
        if len(imgs) < 2:
            skipped.append({"name": name, "reason": f"only {len(imgs)} readable sample(s)"})
            continue
        per_input[name] = {"n_samples": len(imgs),
                           "diversity": pairwise_diversity(imgs, dist, resolution)}
    values = [v["diversity"] for v in per_input.values()]
    return {"folder": str(folder), "layout": layout, "per_input": per_input,
            "mean": statistics.fmean(values) if values else float("nan"),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0 if values else float("nan"),
            "n": len(values), "skipped": skipped}
