#!/usr/bin/env python
"""Benchmark the anti-artifact penalties on a folder of grid-artifact images vs clean photos.

    python benchmark_anti_periodic.py --artifacts_dir A --clean_dir C \\
        --out per_image.csv --summary_out summary.csv [--plot roc.png]
    python benchmark_anti_periodic.py --synthesize_from PHOTOS --synth_out A   # make an artifact set
    python benchmark_anti_periodic.py --demo --out_dir outputs/anti_grid_demo  # bundled photos

Per image it writes every penalty's value; per penalty the mean on artifacts, the mean on
clean images, their ratio and the ROC-AUC (artifact = positive class, higher penalty = more
artifact-like). Design and measured figures: docs/anti_grid.md.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewards.cli import UserError as UsageError  # printed as one line, exit code 2

GRID_KINDS = ("lines", "sinusoid", "tile")
# The original benchmark's file names; both files are written unless --demo chooses others.
DEFAULT_OUT = Path("anti_periodic_per_image.csv")
DEFAULT_SUMMARY = Path("anti_periodic_summary.csv")
# Natural photos bundled with scikit-image (offline). brick/text/page/grass/gravel are the
# natural periodic-ish textures a grid detector must not confuse with a VAE grid.
DEMO_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
               "immunohistochemistry", "moon", "stereo_motorcycle", "retina", "rocket", "page",
               "text", "brick", "grass", "gravel", "clock", "cell")


# --------------------------------------------------------------------------------------
# ROC-AUC with rank statistics (Mann-Whitney U), ties counted as 1/2
# --------------------------------------------------------------------------------------
def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative) + 0.5 P(tie)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty_like(allv)
    sorted_v = allv[order]
    # average ranks over ties (1-based)
    i = 0
    n = allv.size
    while i < n:
        j = i
        while j + 1 < n and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(positives, negatives) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds (for plotting)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    thr = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([0.0] + [(pos >= t).mean() for t in thr])
    fpr = np.array([0.0] + [(neg >= t).mean() for t in thr])
    return fpr, tpr


# --------------------------------------------------------------------------------------
# Synthetic grid artifacts
# --------------------------------------------------------------------------------------
def grid_pattern(h: int, w: int, period: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean periodic pattern (h, w) with max |value| = 1 and a random phase.

    ``lines``: 1-px lines every ``period`` px on both axes; ``sinusoid``: a 2-D
    (checker-like) product of cosines; ``tile``: a random smooth ``period x period`` tile
    repeated (closest to the texture a VAE decoder leaves).
    """
    y, x = np.mgrid[0:h, 0:w]
    py, px = rng.integers(0, period, size=2)
    if kind == "lines":
        pat = ((((y + py) % period) == 0) | (((x + px) % period) == 0)).astype(np.float64)
    elif kind == "sinusoid":
        a, b = rng.uniform(0, 2 * np.pi, size=2)
        pat = np.cos(2 * np.pi * y / period + a) * np.cos(2 * np.pi * x / period + b)
    elif kind == "tile":
        tile = rng.standard_normal((period, period))
        # light circular smoothing: the decoder's grid is soft, not white noise
        f = np.fft.fft2(tile)
        k = np.fft.fftfreq(period)
        f *= np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 0.25 ** 2))
        tile = np.real(np.fft.ifft2(f))
        pat = np.tile(tile, (h // period + 2, w // period + 2))[py:py + h, px:px + w]
    else:
        raise ValueError(f"unknown grid kind {kind!r}; use one of {', '.join(GRID_KINDS)}")
    pat = pat - pat.mean()
    return pat / max(np.abs(pat).max(), 1e-12)


def add_grid(image: torch.Tensor, period: int, amplitude: float, kind: str,
             rng: np.random.Generator) -> torch.Tensor:
    """Add a grid of peak ``amplitude`` ([0,1] units) to a (3,H,W) image; slight per-channel tint."""
    _, h, w = image.shape
    pat = torch.from_numpy(grid_pattern(h, w, period, kind, rng)).to(image.dtype)
    gains = torch.from_numpy(rng.uniform(0.8, 1.2, size=3)).to(image.dtype).view(3, 1, 1)
    return (image + amplitude * gains * pat).clamp(0, 1)


def save_jpeg(image: torch.Tensor, path: Path, quality: int) -> None:
    from rewards.images import to_pil

    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path, format="JPEG", quality=quality, subsampling=0)


def synthesize(clean_paths: Sequence[Path], out_dir: Path, periods: Sequence[int],
               amplitudes: Sequence[float], kinds: Sequence[str], jpeg_qualities: Sequence[int],
               variants: int | None, seed: int, progress: bool = True) -> list[dict]:
    """Write grid-artifact versions of ``clean_paths`` into ``out_dir``; returns the manifest.

    For each photo the combinations period x amplitude x JPEG quality (0 = PNG) are made
    (all of them, or ``variants`` drawn at random), each with a random kind and phase.
    """
    from tqdm import tqdm

    from rewards.images import ImageLoadError, load_image, save_image

    rng = np.random.default_rng(seed)
    combos = [(p, a, q) for p in periods for a in amplitudes for q in jpeg_qualities]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for path in tqdm(clean_paths, desc="synthesize", disable=not progress):
        try:
            img = load_image(path)
        except ImageLoadError as exc:
            print(f"skipped unreadable image: {exc}", file=sys.stderr)
            continue
        chosen = combos if variants is None or variants >= len(combos) else [
            combos[i] for i in rng.choice(len(combos), size=variants, replace=False)]
        for period, amp, q in chosen:
            kind = kinds[rng.integers(len(kinds))]
            art = add_grid(img, period, amp, kind, rng)
            name = f"{path.stem}_p{period}_a{amp * 100:g}_{kind}_{'q%d' % q if q else 'png'}"
            dest = out_dir / (name + (".jpg" if q else ".png"))
            if q:
                save_jpeg(art, dest, q)
            else:
                save_image(art, dest)
            manifest.append({"file": dest.name, "source": path.name, "period": period,
                             "amplitude": amp, "kind": kind, "jpeg_quality": q})
    with open(out_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "source", "period", "amplitude", "kind",
                                               "jpeg_quality"])
        writer.writeheader()
        writer.writerows(manifest)
    return manifest


# --------------------------------------------------------------------------------------
# Penalties
# --------------------------------------------------------------------------------------
def build_penalties(args) -> dict:
    """name -> fn((1,3,H,W)) -> float; every penalty the benchmark reports."""
    from rewards.anchors import brightness_penalty, crispness_penalty
    from rewards.grid import GridConfig, GridPenalty

    cfg = dict(period=args.period, max_harm=args.max_harm, sigma_bins=args.sigma_bins, tau=args.tau,
               eval_resize=args.eval_resize or None, extra_periods=tuple(args.extra_periods),
               local_window=args.local_window, local_stride=args.local_stride,
               min_amplitude=args.min_amplitude, margin=args.margin, ring=tuple(args.ring),
               local_top=args.local_top, local_weight=args.local_weight,
               period_temperature=args.period_temperature)
    combined = GridPenalty(GridConfig(mode="combined", **cfg))

    def grid_all(x):
        pen, terms = combined(x)
        return {"grid": pen.item(), "grid_global": terms["global"].item(),
                "grid_local": terms["local"].item()}

    def anchors(x):
        return {"brightness": brightness_penalty(x, target=args.brightness_target,
                                                 band=args.brightness_band).item(),
                "crispness": crispness_penalty(x, floor=args.crispness_floor,
                                               eval_resize=args.crispness_resize).item()}

    penalties = {"grid": grid_all, "anchors": anchors}
    if not getattr(args, "no_baselines", False):
        penalties["original"] = original_baselines(args)
    return penalties


def original_baselines(args):
    """The original project's loss variants (rewards/grid_original.py) as one penalty fn."""
    from rewards.grid_original import BaselineConfig, baseline_penalties, parse_harmonics
    from rewards.images import load_image

    try:
        cfg = BaselineConfig(
            period=args.period, max_harm=args.max_harm, sigma_bins=args.sigma_bins,
            resize=args.eval_resize or None, window=args.local_window, hop=args.local_stride,
            edge_penalty=args.edge_penalty, combo_mode=args.combo_mode, w_local=args.w_local,
            tau_global=args.tau_global, tau_local=args.tau_local,
            selective_top_p=args.selective_top_p,
            selective_coverage_alpha=args.selective_coverage_alpha,
            proj_harmonics=parse_harmonics(args.proj_harmonics), proj_top_p=args.proj_top_p,
            proj_detach_norm=not args.no_proj_detach_norm, tau=args.tau)
    except ValueError as exc:
        raise UsageError(f"baseline options: {exc}") from None
    template = None
    if args.template_16 is not None:
        template = luminance_of(load_image(args.template_16))

    def baselines(x):
        return baseline_penalties(x[0], cfg, template)

    return baselines


def luminance_of(image: torch.Tensor) -> torch.Tensor:
    from rewards.grid import luminance

    return luminance(image[None])[0]


def score_folder(paths: Sequence[Path], label: str, penalties: dict, progress: bool = True,
                 ) -> tuple[list[dict], list[tuple[Path, str]]]:
    from tqdm import tqdm

    from rewards.images import ImageLoadError, load_image

    rows, failed = [], []
    for path in tqdm(paths, desc=f"score {label}", disable=not progress):
        try:
            img = load_image(path)
        except ImageLoadError as exc:
            failed.append((path, str(exc)))
            continue
        row = {"file": str(path), "label": label, "height": img.shape[1], "width": img.shape[2]}
        with torch.no_grad():
            for fn in penalties.values():
                row.update(fn(img[None]))
        rows.append(row)
    return rows, failed


PENALTY_COLUMNS = ("grid", "grid_global", "grid_local", "brightness", "crispness")


def summarise(rows: list[dict]) -> list[dict]:
    from rewards.grid_original import COLUMNS as BASELINES

    out = []
    for name in PENALTY_COLUMNS + tuple(c for c in BASELINES if c in rows[0]):
        art = [r[name] for r in rows if r["label"] == "artifact"]
        cln = [r[name] for r in rows if r["label"] == "clean"]
        m_a, m_c = float(np.mean(art)), float(np.mean(cln))
        out.append({"penalty": name, "n_artifact": len(art), "n_clean": len(cln),
                    "mean_artifact": m_a, "mean_clean": m_c,
                    "ratio": m_a / m_c if m_c != 0 else (math.inf if m_a > 0 else float("nan")),
                    "auc": roc_auc(art, cln)})
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def format_table(summary: list[dict]) -> str:
    lines = [f"{'penalty':<16} {'n_art':>6} {'n_clean':>7} {'mean_art':>10} {'mean_clean':>10} "
             f"{'ratio':>8} {'ROC-AUC':>8}"]
    for s in summary:
        lines.append(f"{s['penalty']:<16} {s['n_artifact']:>6} {s['n_clean']:>7} "
                     f"{s['mean_artifact']:>10.4g} {s['mean_clean']:>10.4g} {s['ratio']:>8.3g} "
                     f"{s['auc']:>8.4f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in ("grid", "grid_global", "grid_local"):
        art = [r[name] for r in rows if r["label"] == "artifact"]
        cln = [r[name] for r in rows if r["label"] == "clean"]
        fpr, tpr = roc_curve(art, cln)
        ax1.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(art, cln):.3f})")
    ax1.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax1.set(xlabel="false positive rate (clean)", ylabel="true positive rate (artifact)",
            title="ROC, artifact vs clean")
    ax1.legend(loc="lower right")
    art = np.array([r["grid"] for r in rows if r["label"] == "artifact"])
    cln = np.array([r["grid"] for r in rows if r["label"] == "clean"])
    bins = np.linspace(0, max(art.max(initial=0), cln.max(initial=0)) + 1e-6, 40)
    ax2.hist(cln, bins=bins, alpha=0.6, density=True, label=f"clean (n={cln.size})")
    ax2.hist(art, bins=bins, alpha=0.6, density=True, label=f"artifact (n={art.size})")
    ax2.set(xlabel="default grid penalty", ylabel="density", title="penalty histogram")
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Demo: clean photos from scikit-image
# --------------------------------------------------------------------------------------
def write_demo_photos(out_dir: Path, max_side: int = 512) -> list[Path]:
    """Save scikit-image's bundled photos as PNGs (long side <= ``max_side``)."""
    import skimage.data

    from rewards.images import resize_to, save_image

    paths = []
    for name in DEMO_PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception as exc:  # optional data files (pooch) may be absent
            print(f"skipped skimage.data.{name}: {exc}", file=sys.stderr)
            continue
        if isinstance(arr, tuple):
            arr = arr[0]
        arr = np.asarray(arr)
        arr = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else max(arr.max(), 1))
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, -1)
        img = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)
        h, w = img.shape[1:]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            img = resize_to(img, round(h * s), round(w * s), mode="stretch")
        dest = out_dir / f"{name}.png"
        save_image(img, dest)
        paths.append(dest)
    return paths


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _pos_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not (0 < v <= 1):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def _amplitude(s: str) -> float:
    v = float(s)
    if not (0 < v <= 1):
        raise argparse.ArgumentTypeError(f"amplitude must be in (0, 1] ([0,1] pixel units), got {s}")
    return v


def _unit_float(s: str) -> float:
    v = _finite_float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def _jpeg_q(s: str) -> int:
    v = int(s)
    if not (0 <= v <= 100):
        raise argparse.ArgumentTypeError(f"JPEG quality must be 0 (PNG) or 1..100, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("folders")
    io.add_argument("--artifacts_dir", type=Path, help="folder of images with grid artifacts (positives)")
    io.add_argument("--clean_dir", type=Path, help="folder of clean images (negatives)")
    io.add_argument("--out", type=Path, default=None,
                    help=f"per-image CSV, every penalty's value (default: {DEFAULT_OUT}; with "
                         "--demo: OUT_DIR/per_image.csv)")
    io.add_argument("--summary_out", type=Path, default=None,
                    help=f"summary CSV: means, ratio, ROC-AUC per penalty (default: "
                         f"{DEFAULT_SUMMARY}; with --demo: OUT_DIR/summary.csv)")
    io.add_argument("--plot", type=Path, help="write a ROC + histogram PNG here")
    io.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    io.add_argument("--no_progress", action="store_true", help="hide the progress bars")

    syn = p.add_argument_group("synthesis (--synthesize_from DIR --synth_out DIR)")
    syn.add_argument("--synthesize_from", type=Path, help="clean photos to add grid artifacts to")
    syn.add_argument("--synth_out", type=Path,
                     help="where the synthetic artifact set is written (not --synthesize_from: "
                          "inputs are never written over)")
    syn.add_argument("--synth_periods", type=_positive_int, nargs="+", default=[8, 16, 32],
                     help="grid periods in px (default: 8 16 32)")
    syn.add_argument("--synth_amplitudes", type=_amplitude, nargs="+", default=[0.005, 0.01, 0.02, 0.04],
                     help="peak grid amplitudes in [0,1] pixel units (default: 0.005 0.01 0.02 0.04)")
    syn.add_argument("--synth_kinds", nargs="+", default=list(GRID_KINDS), choices=GRID_KINDS,
                     help="grid kinds, one drawn at random per image (default: all)")
    syn.add_argument("--synth_jpeg", type=_jpeg_q, nargs="+", default=[0, 90],
                     help="JPEG qualities; 0 = lossless PNG (default: 0 90)")
    syn.add_argument("--synth_variants", type=_positive_int, default=None,
                     help="random combinations per photo (default: every period x amplitude x JPEG)")
    syn.add_argument("--seed", type=int, default=0, help="random seed of kinds and phases")

    g = p.add_argument_group("grid penalty (rewards.grid)")
    g.add_argument("--period", type=_pos_float, default=16.0, help="grid period in px (default 16)")
    g.add_argument("--extra_periods", type=_pos_float, nargs="*", default=[8.0, 32.0],
                   help="other periods covered by the comb (default: 8 32; none: just --period)")
    g.add_argument("--max_harm", type=_positive_int, default=3, help="harmonics per period (default 3)")
    g.add_argument("--sigma_bins", type=_pos_float, default=0.5,
                   help="Gaussian weight (FFT bins) of a tooth that falls between bins; unused when "
                        "the image holds whole periods (default 0.5)")
    g.add_argument("--tau", type=_finite_float, default=0.0, help="hinge threshold (default 0)")
    g.add_argument("--eval_resize", type=_nonneg_int, default=512,
                   help="downscale so the long side is at most this; 0 = never (default 512)")
    g.add_argument("--local_window", type=_positive_int, default=128, help="local window px (default 128)")
    g.add_argument("--local_stride", type=_positive_int, default=64, help="local stride px (default 64)")
    g.add_argument("--min_amplitude", type=_pos_float, default=5e-5,
                   help="energy floor: a tone this weak counts as nothing (default 5e-5)")
    g.add_argument("--margin", type=_nonneg_float, default=0.5,
                   help="log-contrast a comb tooth needs before it counts (default 0.5)")
    g.add_argument("--ring", type=_pos_float, nargs=2, default=[1.0, 1.5], metavar=("INNER", "OUTER"),
                   help="neighbour ring around each tooth, Chebyshev bins (default 1 1.5)")
    g.add_argument("--period_temperature", type=_nonneg_float, default=0.05,
                   help="soft max over the periods' scores; 0 = hard max (default 0.05)")
    g.add_argument("--local_top", type=_fraction, default=0.25,
                   help="local score = mean of this top fraction of windows (default 0.25)")
    g.add_argument("--local_weight", type=_nonneg_float, default=0.5,
                   help="combined = global + local_weight * local (default 0.5)")

    b = p.add_argument_group(
        "the original project's penalties as baseline columns (rewards/grid_original.py; they "
        "use --period, --max_harm, --sigma_bins, --eval_resize, --local_window/--local_stride "
        "and --tau too)")
    b.add_argument("--no_baselines", action="store_true",
                   help="skip the baseline columns (fft_global ... original_trainer); faster")
    b.add_argument("--edge_penalty", type=_nonneg_float, default=8.0,
                   help="local_adaptive: window weight 1/(1 + edge_penalty * mean Sobel magnitude)")
    b.add_argument("--template_16", type=Path, default=None,
                   help="image of one grid tile (e.g. 16x16) for the template column (default: "
                        "no template column)")
    b.add_argument("--combo_mode", default="ratio", choices=["ratio", "abs"],
                   help="combo: comb/background ratios (Hann-windowed) or absolute energies")
    b.add_argument("--w_local", type=_nonneg_float, default=0.2, help="combo = global + w_local * local")
    b.add_argument("--tau_global", type=_finite_float, default=0.0, help="combo: hinge of the global part")
    b.add_argument("--tau_local", type=_finite_float, default=0.0, help="combo: hinge of the local part")
    b.add_argument("--selective_top_p", type=_fraction, default=0.35,
                   help="selective_local: mean over this top fraction of windows")
    b.add_argument("--selective_coverage_alpha", type=_unit_float, default=0.5,
                   help="selective_local = (1 - alpha) * top mean + alpha * share of windows "
                        "above the margin")
    b.add_argument("--proj_harmonics", default="1,2,3",
                   help="proj_cosine / amp_hinge: harmonics of --period, comma-separated")
    b.add_argument("--proj_top_p", type=_fraction, default=0.35,
                   help="proj_cosine: mean over this top fraction of windows")
    b.add_argument("--no_proj_detach_norm", action="store_true",
                   help="proj_cosine: let gradients flow through the profile norm (values unchanged)")

    a = p.add_argument_group("anchors (rewards.anchors)")
    a.add_argument("--brightness_target", type=_finite_float, default=0.45, help="mean luma target")
    a.add_argument("--brightness_band", type=_finite_float, default=0.08, help="half-width of the zero band")
    a.add_argument("--crispness_floor", type=_pos_float, default=None,
                   help="Tenengrad floor (default: rewards.anchors.DEFAULT_CRISPNESS_FLOOR)")
    a.add_argument("--crispness_resize", type=_nonneg_int, default=512,
                   help="long side the crispness is measured at (default 512)")

    d = p.add_argument_group("demo")
    d.add_argument("--demo", action="store_true",
                   help="bundled scikit-image photos -> synthetic artifacts -> benchmark, in --out_dir")
    d.add_argument("--out_dir", type=Path, default=Path("outputs/anti_grid_demo"),
                   help="demo output folder (default outputs/anti_grid_demo)")
    from rewards.original_flags import add_original_flags

    add_original_flags(p, "benchmark")  # --resize, --window, --hop under their old names
    return p


def _list(folder: Path, what: str, recursive: bool) -> list[Path]:
    from rewards.images import IMAGE_EXTENSIONS, list_images, unsupported_note

    try:
        paths = list_images(folder, recursive=recursive)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UsageError(f"{what}: {exc}") from None
    if not paths:
        raise UsageError(f"{what}: no images found in {folder} "
                         f"(extensions: {' '.join(IMAGE_EXTENSIONS)})"
                         f"{unsupported_note(folder, recursive)}")
    return paths


def run_benchmark(args, artifacts_dir: Path, clean_dir: Path) -> list[dict]:
    art_paths = _list(artifacts_dir, "--artifacts_dir", args.recursive)
    clean_paths = _list(clean_dir, "--clean_dir", args.recursive)
    from rewards.paths import check_no_overwrite

    for flag in ("out", "summary_out", "plot"):  # a report never replaces an image it scores
        if getattr(args, flag) is not None:
            check_no_overwrite([getattr(args, flag)], art_paths + clean_paths, f"--{flag}")
    penalties = build_penalties(args)
    t0 = time.perf_counter()
    rows_a, fail_a = score_folder(art_paths, "artifact", penalties, not args.no_progress)
    rows_c, fail_c = score_folder(clean_paths, "clean", penalties, not args.no_progress)
    elapsed = time.perf_counter() - t0
    for path, reason in fail_a + fail_c:
        print(f"skipped unreadable image: {reason}", file=sys.stderr)
    if not rows_a or not rows_c:
        raise UsageError("no readable images in "
                         + ("--artifacts_dir" if not rows_a else "--clean_dir"))
    rows = rows_a + rows_c
    summary = summarise(rows)
    if args.out:
        write_csv(args.out, rows)
    if args.summary_out:
        write_csv(args.summary_out, summary)
        print(f"wrote {args.out} (per image) and {args.summary_out} (summary)"
              if args.out else f"wrote {args.summary_out}")
    if args.plot:
        plot(rows, args.plot, title=f"{len(rows_a)} artifact vs {len(rows_c)} clean images")
    print(format_table(summary))
    print(f"scored {len(rows)} images in {elapsed:.1f} s; skipped {len(fail_a) + len(fail_c)} unreadable")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from rewards.cli import run_cli

    return run_cli(_main, argv, "benchmark_anti_periodic.py")


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.brightness_band < 0:
        parser.error("--brightness_band must be >= 0")
    if args.eval_resize and args.eval_resize < 32:
        parser.error("--eval_resize must be 0 or >= 32")
    from rewards.anchors import DEFAULT_CRISPNESS_FLOOR

    if args.crispness_floor is None:
        args.crispness_floor = DEFAULT_CRISPNESS_FLOOR
    if args.demo:
        out = args.out_dir
        clean_dir, art_dir = out / "clean", out / "artifacts"
        t0 = time.perf_counter()
        clean = write_demo_photos(clean_dir)
        synthesize(clean, art_dir, args.synth_periods, args.synth_amplitudes, args.synth_kinds,
                   args.synth_jpeg, args.synth_variants, args.seed, not args.no_progress)
        args.out = args.out or out / "per_image.csv"
        args.summary_out = args.summary_out or out / "summary.csv"
        args.plot = args.plot or out / "roc.png"
        run_benchmark(args, art_dir, clean_dir)
        print(f"demo written to {out} in {time.perf_counter() - t0:.1f} s "
              f"(per-image CSV, summary CSV, ROC plot)")
        return 0
    if args.synthesize_from is not None or args.synth_out is not None:
        if args.synthesize_from is None or args.synth_out is None:
            raise UsageError("--synthesize_from and --synth_out go together")
        from rewards.paths import check_no_overwrite, check_outputs_spare_inputs

        # The synthetic set never goes over or among the clean photos it is made from.
        check_outputs_spare_inputs({"--synth_out": args.synth_out},
                                   {"--synthesize_from": args.synthesize_from})
        clean = _list(args.synthesize_from, "--synthesize_from", args.recursive)
        check_no_overwrite([args.synth_out / "manifest.csv"], clean, "--synth_out")
        manifest = synthesize(clean, args.synth_out, args.synth_periods, args.synth_amplitudes,
                              args.synth_kinds, args.synth_jpeg, args.synth_variants, args.seed,
                              not args.no_progress)
        print(f"wrote {len(manifest)} artifact images to {args.synth_out}")
        if args.artifacts_dir is None and args.clean_dir is None:
            return 0
    if args.artifacts_dir is None or args.clean_dir is None:
        raise UsageError("give --artifacts_dir and --clean_dir (or --demo, or --synthesize_from "
                         "with --synth_out)")
    args.out = args.out or DEFAULT_OUT                  # the original's names, written by default
    args.summary_out = args.summary_out or DEFAULT_SUMMARY
    run_benchmark(args, args.artifacts_dir, args.clean_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
