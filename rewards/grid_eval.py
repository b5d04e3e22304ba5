"""Evaluating anti-grid penalties: synthetic grid artifacts, scoring folders, ROC-AUC, reports.

The library behind ``benchmark_anti_periodic.py`` (and benchmarks/bench_grid.py): make an
artifact set from clean photos (:func:`synthesize`), score folders with every penalty
(:func:`score_folder`), summarise means / ratios / ROC-AUC per penalty (:func:`summarise`),
write CSVs and the ROC plot. Design and measured figures: docs/anti_grid.md.
"""
from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.cli import UserError
from common.images import (IMAGE_EXTENSIONS, ImageLoadError, folder_counts, list_images,
                           load_image, save_image, to_pil, unsupported_note)
from common.paths import check_no_overwrite
from common.photos import write_photos

from .anchors import brightness_penalty, crispness_penalty
from .grid import COHERENT, REC709, GridConfig, GridPenalty, luminance
from .grid_original import COLUMNS as BASELINES
from .grid_original import BaselineConfig, baseline_penalties, parse_harmonics

GRID_KINDS = ("lines", "sinusoid", "tile")
# "luma": the pattern in every channel with a slight per-channel tint (what a decoder grid
# mostly is); "chroma": colour without luma (a direction orthogonal to the Rec.709 weights),
# which a luma-only detector cannot see.
GRID_COLOURS = ("luma", "chroma")
# An artifact image whose saved file holds less of its grid than this is not written.
MIN_GRID_KEPT = 0.25
# Our file names (the original's, anti_periodic_*.csv, hold only its own columns: written by
# --semantics original); both files are written unless --demo chooses others.
DEFAULT_OUT = Path("grid_benchmark_per_image.csv")
DEFAULT_SUMMARY = Path("grid_benchmark_summary.csv")
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


def chroma_direction(rng: np.random.Generator) -> np.ndarray:
    """A random colour (3,) with zero Rec.709 luma and max |component| = 1."""
    w = np.asarray(REC709, dtype=np.float64)
    v = rng.standard_normal(3)
    v -= w * (v @ w) / (w @ w)          # remove the luma component
    return v / np.abs(v).max()


def grid_signal(shape: Sequence[int], period: int, amplitude: float, kind: str,
                rng: np.random.Generator, colour: str = "luma") -> torch.Tensor:
    """The grid alone, (3,H,W) for an image of ``shape`` (3,H,W): peak ``amplitude``.

    ``colour="luma"``: every channel, gains 0.8-1.2 (a slight tint); ``"chroma"``: along a
    random luma-free colour direction (:func:`chroma_direction`), peak ``amplitude`` in the
    channel that moves most.
    """
    if colour not in GRID_COLOURS:
        raise ValueError(f"unknown grid colour {colour!r}; use one of {', '.join(GRID_COLOURS)}")
    _, h, w = shape
    pat = torch.from_numpy(grid_pattern(h, w, period, kind, rng)).float()
    gains = rng.uniform(0.8, 1.2, size=3) if colour == "luma" else chroma_direction(rng)
    return amplitude * torch.from_numpy(gains).float().view(3, 1, 1) * pat


def add_grid(image: torch.Tensor, period: int, amplitude: float, kind: str,
             rng: np.random.Generator, colour: str = "luma") -> torch.Tensor:
    """Add a grid of peak ``amplitude`` ([0,1] units) to a (3,H,W) image (see grid_signal)."""
    signal = grid_signal(image.shape, period, amplitude, kind, rng, colour)
    return (image + signal.to(image.dtype)).clamp(0, 1)


def periodic_part(x: torch.Tensor, period: int) -> torch.Tensor:
    """(C,H,W) -> (C,p,p): the mean over every whole p x p cell (what repeats every p px)."""
    c, h, w = x.shape
    hh, ww = h // period * period, w // period * period
    cells = x[:, :hh, :ww].reshape(c, hh // period, period, ww // period, period)
    return cells.mean(dim=(1, 3))


def surviving_fraction(saved: torch.Tensor, saved_clean: torch.Tensor, signal: torch.Tensor,
                       period: int) -> float:
    """How much of the grid the saved file still holds: RMS of the periodic part of
    ``saved - saved_clean`` over that of ``signal`` (both files written the same way, so the
    compression error of the photo itself cancels; folding to one period averages out what
    does not repeat). About 1 when the grid is intact, 0 when the format erased it."""
    d = periodic_part(saved.float() - saved_clean.float(), period)
    g = periodic_part(signal.float(), period)
    return float(d.norm() / g.norm().clamp_min(1e-12))


def save_jpeg(image: torch.Tensor, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path, format="JPEG", quality=quality, subsampling=0)


def _jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    import io

    from PIL import Image

    buf = io.BytesIO()
    to_pil(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    buf.seek(0)
    arr = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def synthesize(clean_paths: Sequence[Path], out_dir: Path, periods: Sequence[int],
               amplitudes: Sequence[float], kinds: Sequence[str], jpeg_qualities: Sequence[int],
               variants: int | None, seed: int, progress: bool = True,
               colours: Sequence[str] = ("luma",)) -> list[dict]:
    """Write grid-artifact versions of ``clean_paths`` into ``out_dir``; returns the manifest.

    For each photo the combinations period x amplitude x JPEG quality (0 = PNG) x colour
    are made (all of them, or ``variants`` drawn at random), each with a random kind and
    phase. Luma grids keep the names (and random draws) they had before colours existed;
    chroma grids are named ``..._chroma``.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    # Chroma grids draw from their own generator, so adding them leaves every luma grid of
    # a full set (no ``variants``) exactly as it was.
    rngs = {"luma": rng, "chroma": np.random.default_rng([seed, 1])}
    combos = [(p, a, q, c) for c in colours for p in periods for a in amplitudes
              for q in jpeg_qualities]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for path in tqdm(clean_paths, desc="synthesize", disable=not progress):
        try:
            img = load_image(path)
        except ImageLoadError as exc:
            print(f"skipped unreadable image: {exc}", file=sys.stderr)
            continue
        saved_clean: dict[int, torch.Tensor] = {}   # the photo itself, saved like each artifact
        chosen = combos if variants is None or variants >= len(combos) else [
            combos[i] for i in rng.choice(len(combos), size=variants, replace=False)]
        for period, amp, q, colour in chosen:
            r = rngs[colour]
            kind = kinds[r.integers(len(kinds))]
            signal = grid_signal(img.shape, period, amp, kind, r, colour)
            art = (img + signal.to(img.dtype)).clamp(0, 1)
            name = (f"{path.stem}_p{period}_a{amp * 100:g}_{kind}_{'q%d' % q if q else 'png'}"
                    + ("_chroma" if colour == "chroma" else ""))
            dest = out_dir / (name + (".jpg" if q else ".png"))
            if q:
                save_jpeg(art, dest, q)
            else:
                save_image(art, dest)
            # A positive must hold a grid: JPEG q=90 zeroes a 0.5 % colour-only grid on a
            # grey photo (its chroma is quantised away), and such a file is not an artifact.
            if q not in saved_clean:
                saved_clean[q] = img if not q else _jpeg_roundtrip(img, q)
            kept = surviving_fraction(load_image(dest), saved_clean[q], signal, period)
            row = {"file": dest.name, "source": path.name, "period": period, "amplitude": amp,
                   "kind": kind, "jpeg_quality": q, "colour": colour,
                   "grid_kept": round(kept, 3), "dropped": ""}
            if kept < MIN_GRID_KEPT:
                dest.unlink()
                row["dropped"] = f"the saved file holds {kept:.0%} of the grid"
            manifest.append(row)
    with open(out_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(manifest[0]) if manifest else ["file"])
        writer.writeheader()
        writer.writerows(manifest)
    dropped = [m for m in manifest if m["dropped"]]
    if dropped:
        print(f"dropped {len(dropped)} of {len(manifest)} artifact images whose file kept less "
              f"than {MIN_GRID_KEPT:.0%} of the grid (JPEG; listed in manifest.csv)",
              file=sys.stderr)
    return [m for m in manifest if not m["dropped"]]


# --------------------------------------------------------------------------------------
# Penalties
# --------------------------------------------------------------------------------------
def build_penalties(args) -> dict:
    """name -> fn((1,3,H,W)) -> float; every penalty the benchmark reports."""
    cfg = dict(period=args.period, max_harm=args.max_harm, sigma_bins=args.sigma_bins, tau=args.tau,
               eval_resize=args.eval_resize or None, extra_periods=tuple(args.extra_periods),
               local_window=args.local_window, local_stride=args.local_stride,
               min_amplitude=args.min_amplitude, margin=args.margin, ring=tuple(args.ring),
               local_top=args.local_top, local_weight=args.local_weight,
               period_temperature=args.period_temperature, statistic=args.statistic)
    # both terms are always computed (columns grid_global, grid_local); "grid" is the mode's
    terms = GridPenalty(GridConfig(**{**cfg, "mode": "combined"}))
    # the coherent statistic (opt-in, rewards.grid.COHERENT) beside it, this run's other options
    coherent = GridPenalty(GridConfig(**{**cfg, **COHERENT}))

    def grid_all(x):
        t = terms.terms(x)
        score = {"global": t["global"], "local": t["local"],
                 "combined": t["global"] + args.local_weight * t["local"]}[args.mode]
        return {"grid": torch.relu(score - args.tau).item(), "grid_global": t["global"].item(),
                "grid_local": t["local"].item(), "grid_coherent": coherent(x)[0].item()}

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
    try:
        cfg = BaselineConfig(
            # --max_harm 0 (ours: every harmonic) -> 3, the original trainer's default
            period=args.period, max_harm=args.max_harm or 3, sigma_bins=args.sigma_bins,
            resize=args.eval_resize or None, window=args.local_window, hop=args.local_stride,
            edge_penalty=args.edge_penalty, combo_mode=args.combo_mode, w_local=args.w_local,
            tau_global=args.tau_global, tau_local=args.tau_local,
            selective_top_p=args.selective_top_p,
            selective_coverage_alpha=args.selective_coverage_alpha,
            proj_harmonics=parse_harmonics(args.proj_harmonics), proj_top_p=args.proj_top_p,
            proj_detach_norm=not args.no_proj_detach_norm, tau=args.tau)
    except ValueError as exc:
        raise UserError(f"baseline options: {exc}") from None
    template = None
    if args.template_16 is not None:
        template = luminance_of(load_image(args.template_16))

    def baselines(x):
        return baseline_penalties(x[0], cfg, template)

    return baselines


def luminance_of(image: torch.Tensor) -> torch.Tensor:
    return luminance(image[None])[0]


def score_folder(paths: Sequence[Path], label: str, penalties: dict, progress: bool = True,
                 ) -> tuple[list[dict], list[tuple[Path, str]]]:
    from tqdm import tqdm


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


PENALTY_COLUMNS = ("grid", "grid_global", "grid_local", "grid_coherent", "brightness",
                   "crispness")


def summarise(rows: list[dict]) -> list[dict]:
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
    for name in ("grid", "grid_global", "grid_local", "grid_coherent"):
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
    return write_photos(out_dir, DEMO_PHOTOS, max_side=max_side, skip_missing=True)


def list_folder(folder: Path, what: str, recursive: bool) -> list[Path]:
    try:
        paths = list_images(folder, recursive=recursive)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UserError(f"{what}: {exc}") from None
    if not paths:
        raise UserError(f"{what}: no images found in {folder}"
                        f"{' or its sub-folders' if recursive else ''} "
                        f"(extensions: {' '.join(IMAGE_EXTENSIONS)})"
                        f"{unsupported_note(folder, recursive)}")
    return paths


def run_benchmark(args, artifacts_dir: Path, clean_dir: Path) -> list[dict]:
    art_paths = list_folder(artifacts_dir, "--artifacts_dir", args.recursive)
    clean_paths = list_folder(clean_dir, "--clean_dir", args.recursive)
    for flag in ("out", "summary_out", "plot"):  # a report never replaces an image it scores
        if getattr(args, flag) is not None:
            check_no_overwrite([getattr(args, flag)], art_paths + clean_paths, f"--{flag}")
    for what, folder, paths in (("--artifacts_dir", artifacts_dir, art_paths),
                                ("--clean_dir", clean_dir, clean_paths)):
        counts = folder_counts(paths, folder) if args.recursive else None
        if counts:
            print(f"{what}: {counts}", file=sys.stderr)
    penalties = build_penalties(args)
    t0 = time.perf_counter()
    rows_a, fail_a = score_folder(art_paths, "artifact", penalties, not args.no_progress)
    rows_c, fail_c = score_folder(clean_paths, "clean", penalties, not args.no_progress)
    elapsed = time.perf_counter() - t0
    for path, reason in fail_a + fail_c:
        print(f"skipped unreadable image: {reason}", file=sys.stderr)
    if not rows_a or not rows_c:
        raise UserError("no readable images in "
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
