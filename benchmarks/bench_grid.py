#!/usr/bin/env python
"""Speed (and detection) of the grid penalty (default and coherent) vs a naive four-term baseline.

    python benchmarks/bench_grid.py [--batch 4 --size 512 --repeats 5]
                                    [--auc_dir outputs/anti_grid_demo]

Times one forward+backward on a (B,3,S,S) batch on CPU after a warm-up, of the default penalty,
of the coherent statistic (``rewards.grid.COHERENT``, opt-in) and of the baseline, in turn in
one process, so their ratios share the machine's load. The baseline is
written here, labelled NAIVE, in the style of the original research code: a global comb
ratio, a local flat-region-selective ratio, a cosine-projection term and a high-frequency
guard, each with its own FFTs and with windows/masks/bases rebuilt on every call.
Both are then scored on the synthetic artifact set of ``benchmark_anti_periodic.py`` (same
generator: bundled photos, periods 8/16/32, amplitudes 0.5-4 %, PNG and JPEG q=90), so the
speed-up is reported at a measured ROC-AUC. The naive baseline costs ~0.35 s per image (much
more on a loaded CPU), so by default a subset is used: every clean photo and ``--auc_limit``
(72) evenly spaced artifact images of ``--auc_dir`` (a folder written by
``benchmark_anti_periodic.py --demo``), or, without ``--auc_dir``, a fresh set with
``--auc_variants`` (4) random combinations per photo (72 artifacts, seed 0). The whole bench
takes about 1-2 minutes on an idle 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import nonneg_int, positive_int  # noqa: E402
from common.images import list_images, load_image  # noqa: E402
from rewards.grid import COHERENT, GridPenalty, luminance  # noqa: E402
from rewards.grid_eval import roc_auc, synthesize, write_demo_photos  # noqa: E402


# ----------------------------------------------------------------------------------------
# NAIVE baseline (for comparison only; not used by the project)
# ----------------------------------------------------------------------------------------
def _naive_comb_mask(h, w, period, max_harm, sigma, device):
    """Rebuilt on every call, one Gaussian bump per harmonic, in a Python loop."""
    fy = torch.fft.fftfreq(h, device=device)[:, None] * h
    fx = torch.fft.rfftfreq(w, device=device)[None, :] * w
    mask = torch.zeros(h, w // 2 + 1, device=device)
    for a in range(-max_harm, max_harm + 1):
        for b in range(0, max_harm + 1):
            if a == 0 and b == 0:
                continue
            cy, cx = a * h / period, b * w / period
            mask = mask + torch.exp(-((fy - cy) ** 2 + (fx - cx) ** 2) / (2 * sigma ** 2))
    return mask.clamp(max=1.0)


def naive_global_ratio(x, period=16, max_harm=3, sigma=0.8):
    lum = luminance(x)
    h, w = lum.shape[-2:]
    win = torch.outer(torch.hann_window(h), torch.hann_window(w))
    p = torch.fft.rfft2((lum - lum.mean((-2, -1), keepdim=True)) * win).abs() ** 2
    mask = _naive_comb_mask(h, w, period, max_harm, sigma, x.device)
    p = p.clone()
    p[:, 0, 0] = 0
    return (p * mask).sum((-2, -1)) / (p.sum((-2, -1)) + 1e-8)


def naive_local_selective(x, period=16, max_harm=3, sigma=0.8, win=64, stride=32):
    lum = luminance(x)
    tiles = lum[:, None].unfold(2, win, stride).unfold(3, win, stride)
    B = lum.shape[0]
    tiles = tiles.reshape(B, -1, win, win)
    out = []
    for t in range(tiles.shape[1]):                      # one FFT per window, in a loop
        tile = tiles[:, t]
        hann = torch.outer(torch.hann_window(win), torch.hann_window(win))
        p = torch.fft.rfft2((tile - tile.mean((-2, -1), keepdim=True)) * hann).abs() ** 2
        mask = _naive_comb_mask(win, win, period, max_harm, sigma, x.device)
        ratio = (p * mask).sum((-2, -1)) / (p[:, 1:].sum((-2, -1)) + 1e-8)
        flat = 1.0 / (tile.var((-2, -1)) * 100 + 1.0)     # favour flat windows
        out.append(ratio * flat)
    return torch.stack(out, 1).mean(1)


def naive_cosine_projection(x, period=16, max_harm=3):
    h, w = x.shape[-2:]
    ys = torch.arange(h, dtype=x.dtype)[:, None]
    xs = torch.arange(w, dtype=x.dtype)[None, :]
    xc = x - x.mean((-2, -1), keepdim=True)
    energy = xc.pow(2).mean((-3, -2, -1)) + 1e-8
    total = 0.0
    for k in range(1, max_harm + 1):                     # bases rebuilt every call
        for basis in (torch.cos(2 * torch.pi * k * xs / period).expand(h, w),
                      torch.sin(2 * torch.pi * k * xs / period).expand(h, w),
                      torch.cos(2 * torch.pi * k * ys / period).expand(h, w),
                      torch.sin(2 * torch.pi * k * ys / period).expand(h, w)):
            proj = (xc * basis).mean((-2, -1))           # per channel
            total = total + proj.pow(2).mean(-1)
    return total / energy


def naive_guard(x):
    h, w = x.shape[-2:]
    p = torch.fft.rfft2(x - x.mean((-2, -1), keepdim=True)).abs() ** 2   # per channel
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    high = ((fy ** 2 + fx ** 2).sqrt() > 0.25).float()
    return ((p * high).sum((-2, -1)) / (p.sum((-2, -1)) + 1e-8)).mean(-1)


def naive_penalty(x):
    """NAIVE baseline: four separately computed terms, summed."""
    return (naive_global_ratio(x) + naive_local_selective(x) + naive_cosine_projection(x)
            + 0.1 * naive_guard(x))


# ----------------------------------------------------------------------------------------
def time_fb(fn, x, warmup, repeats):
    for _ in range(warmup):
        xi = x.detach().requires_grad_(True)
        fn(xi).sum().backward()
    times = []
    for _ in range(repeats):
        xi = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        y = fn(xi).sum()
        y.backward()
        times.append(time.perf_counter() - t0)
        assert torch.isfinite(xi.grad).all()
    times.sort()
    return times[len(times) // 2] * 1000, min(times) * 1000


def evenly_spaced(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread over the whole (sorted) list, so every photo, period
    and amplitude stays represented (a prefix would hold the first photos only)."""
    if limit is None or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def synthetic_set(folder: Path, variants: int, seed: int = 0) -> Path:
    """Write the demo's clean photos and ``variants`` artifact images per photo into ``folder``."""
    clean = write_demo_photos(folder / "clean")
    synthesize(clean, folder / "artifacts", periods=(8, 16, 32), amplitudes=(0.005, 0.01, 0.02, 0.04),
               kinds=("lines", "sinusoid", "tile"), jpeg_qualities=(0, 90), variants=variants,
               seed=seed, progress=False)
    return folder


def auc_on(folder: Path, fns: dict, limit: int | None):
    """ROC-AUC (artifact vs clean) of every penalty in ``fns`` on ``folder``/{artifacts,clean}."""
    sets = {"a": evenly_spaced(list_images(folder / "artifacts"), limit),
            "c": list_images(folder / "clean")}
    images = {lab: [load_image(p)[None] for p in paths] for lab, paths in sets.items()}
    res = {}
    for name, fn in fns.items():
        with torch.no_grad():
            vals = {lab: [fn(x).item() for x in xs] for lab, xs in images.items()}
        res[name] = roc_auc(vals["a"], vals["c"])
    return res, {k: len(v) for k, v in sets.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=4, help="batch size (default 4)")
    ap.add_argument("--size", type=positive_int, default=512, help="square image side (default 512)")
    ap.add_argument("--warmup", type=nonneg_int, default=2, help="untimed calls first (default 2)")
    ap.add_argument("--repeats", type=positive_int, default=7, help="timed calls; the median is reported")
    ap.add_argument("--threads", type=positive_int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    ap.add_argument("--auc_dir", type=Path, default=None,
                    help="demo folder (artifacts/, clean/) to score both on (default: synthesize a "
                         "subset in a temporary folder, see --auc_variants)")
    ap.add_argument("--auc_limit", type=positive_int, default=72,
                    help="with --auc_dir: at most this many artifact images, evenly spaced; 0 = all "
                         "(default 72; the naive baseline takes ~0.35 s per image)")
    ap.add_argument("--auc_variants", type=positive_int, default=4,
                    help="without --auc_dir: random period x amplitude x JPEG combinations per photo "
                         "(default 4 -> 72 artifact images)")
    ap.add_argument("--no_auc", action="store_true", help="time only, skip the ROC-AUC part")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.size < 64 or args.repeats < 1 or args.warmup < 0:
        ap.error("need --batch >= 1, --size >= 64, --repeats >= 1, --warmup >= 0")
    if args.auc_limit < 0 or args.auc_variants < 1:
        ap.error("need --auc_limit >= 0 and --auc_variants >= 1")
    if args.auc_dir is not None and not (args.auc_dir / "artifacts").is_dir():
        ap.error(f"--auc_dir {args.auc_dir} has no artifacts/ folder (make one with "
                 "benchmark_anti_periodic.py --demo --out_dir DIR)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    ours, coherent = GridPenalty(), GridPenalty(**COHERENT)
    naive = "NAIVE 4-term baseline"
    fns = {"default grid penalty (rewards.grid)": lambda t: ours(t)[0],
           "coherent statistic (grid.COHERENT)": lambda t: coherent(t)[0],
           naive: naive_penalty}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.threads} threads; batch {tuple(x.shape)}")
    res = {}
    for name, fn in fns.items():
        med, best = time_fb(fn, x, args.warmup, args.repeats)
        res[name] = med
        print(f"{name:<40} forward+backward median {med:8.1f} ms  (best {best:.1f} ms)")
    for name in fns:
        if name != naive:
            print(f"speed-up of the {name.split(' (')[0]}: {res[naive] / res[name]:.1f}x")
    if args.no_auc:
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.auc_dir is not None:
            folder, how = args.auc_dir, f"{args.auc_dir}, artifacts evenly spaced"
        else:
            folder = synthetic_set(Path(tmp), args.auc_variants)
            how = f"fresh synthetic set, {args.auc_variants} random variants per photo, seed 0"
        t0 = time.perf_counter()
        aucs, n = auc_on(folder, fns, args.auc_limit or None)
        print(f"ROC-AUC, artifact vs clean ({n['a']} artifact vs {n['c']} clean images; {how}; "
              f"{time.perf_counter() - t0:.0f} s):")
        for name, a in aucs.items():
            print(f"{name:<40} ROC-AUC {a:.4f}")


if __name__ == "__main__":
    main()
