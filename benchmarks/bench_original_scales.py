#!/usr/bin/env python
"""How the original project's brightness and grid weights map to ours, measured on photos.

    python benchmarks/bench_original_scales.py [--size 256]

Uses scikit-image's bundled photos (the set of ``benchmark_anti_periodic.py --demo``), long
side ``--size``. Prints:

1. Brightness. The original anchor measures mean LINEAR-LIGHT luminance with a linear hinge;
   ours (default) mean gamma-encoded luma with a squared hinge. For each photo, exposure is
   swept (gamma values times a gain) and both means recorded. Printed: the gamma luma that
   matches the original's targets (0.45, 0.50 linear), and the weight on ours that pulls as
   hard (same gradient with respect to the gain) as original weight 1 at a given excess.
2. Grid. Our grid penalty vs the original trainer's (``proj_cosine + 0.5 * selective_local``,
   rewards/grid_original.py) on clean photos and on the same photos with 16-px grids
   (amplitudes 1 % and 2 %, lines/sinusoid/tile): the ratio of the mean artifact-clean
   gaps gives the weight on ours that moves the reward as much as original weight 1.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.cli import positive_int  # noqa: E402


def photos(size: int) -> list[torch.Tensor]:
    import tempfile

    import rewards.grid_eval as bench
    from common.images import load_image

    with tempfile.TemporaryDirectory() as tmp:
        return [load_image(p) for p in bench.write_demo_photos(Path(tmp), max_side=size)]


def brightness(images: list[torch.Tensor]) -> None:
    from rewards.anchors import mean_brightness

    gains = torch.linspace(0.3, 2.5, 45)
    lin_targets = (0.45, 0.50)
    matched = {t: [] for t in lin_targets}
    ratios = {e: [] for e in (0.02, 0.05, 0.10)}
    for img in images:
        x = img[None]
        luma, lin = [], []
        for g in gains:
            y = (x * g).clamp(0, 1)
            luma.append(mean_brightness(y, "gamma").item())
            lin.append(mean_brightness(y, "linear").item())
        luma, lin = np.array(luma), np.array(lin)
        for t in lin_targets:
            if lin.min() <= t <= lin.max():
                matched[t].append(float(np.interp(t, lin, luma)))
        # same pull: d(penalty)/d(gain). Original: w_o * d(lin)/dg (linear hinge, excess e_lin
        # in luminance). Ours: w * 2 e_luma d(luma)/dg. Compare where the original's excess is e.
        dlin, dluma = np.gradient(lin, gains.numpy()), np.gradient(luma, gains.numpy())
        for e in ratios:
            for t in lin_targets[1:]:
                # the gain at which linear luminance is e above the original's band edge
                edge = t + 0.06
                if not lin.min() <= edge + e <= lin.max():
                    continue
                g_at = np.interp(edge + e, lin, gains.numpy())
                l_at = np.interp(g_at, gains.numpy(), luma)
                l_edge = np.interp(np.interp(edge, lin, gains.numpy()), gains.numpy(), luma)
                e_luma = max(l_at - l_edge, 1e-6)
                pull_o = np.interp(g_at, gains.numpy(), dlin)
                pull_ours = 2 * e_luma * np.interp(g_at, gains.numpy(), dluma)
                ratios[e].append(pull_o / pull_ours)
    print("Brightness (original: linear-light luminance, linear hinge; ours: gamma luma, squared "
          "hinge)")
    for t, v in matched.items():
        print(f"  original target {t:.2f} (linear light) = gamma luma {np.median(v):.3f} "
              f"(median over {len(v)} photos; range {min(v):.3f}-{max(v):.3f})")
    print("  weight on ours that pulls like original weight 1, target 0.50 band 0.06 mapped to "
          "the matching luma band, at an original excess e:")
    for e, v in ratios.items():
        if v:
            print(f"    e = {e:.2f}: x{np.median(v):.1f} (median over {len(v)} photos)")


def grid(images: list[torch.Tensor]) -> None:
    import rewards.grid_eval as bench
    from rewards.grid import GridConfig, GridPenalty
    from rewards.grid_original import BaselineConfig, baseline_penalties

    ours = GridPenalty(GridConfig(mode="combined"))
    cfg = BaselineConfig(hop=64)
    rng = np.random.default_rng(0)
    clean_o, clean_n, art_o, art_n = [], [], [], []
    for img in images:
        with torch.no_grad():
            clean_n.append(ours(img[None])[0].item())
            clean_o.append(baseline_penalties(img, cfg)["original_trainer"])
            for amp in (0.01, 0.02):
                for kind in bench.GRID_KINDS:
                    y = bench.add_grid(img, 16, amp, kind, rng)
                    art_n.append(ours(y[None])[0].item())
                    art_o.append(baseline_penalties(y, cfg)["original_trainer"])
    gap_o = np.mean(art_o) - np.mean(clean_o)
    gap_n = np.mean(art_n) - np.mean(clean_n)
    print("Grid (original trainer penalty = proj_cosine + 0.5 * selective_local, our "
          "reimplementation; ours = rewards.grid combined)")
    print(f"  clean mean: original {np.mean(clean_o):.4f}, ours {np.mean(clean_n):.4f}; "
          f"16-px grids (1-2 %): original {np.mean(art_o):.4f}, ours {np.mean(art_n):.4f}")
    print(f"  artifact-clean gap: original {gap_o:.4f}, ours {gap_n:.4f} -> --grid_ratio_weight "
          f"W of the original ~ W x {gap_o / gap_n:.3f} here")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=positive_int, default=256, help="long side of the photos (default 256)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    images = photos(args.size)
    print(f"{len(images)} bundled photos, long side {args.size}; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    brightness(images)
    grid(images)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
