#!/usr/bin/env python
"""Benchmark the anti-artifact penalties on a folder of grid-artifact images vs clean photos.

    python benchmark_anti_periodic.py --artifacts_dir A --clean_dir C \\
        --out per_image.csv --summary_out summary.csv [--plot roc.png]
    python benchmark_anti_periodic.py --synthesize_from PHOTOS --synth_out A   # make an artifact set
    python benchmark_anti_periodic.py --demo --out_dir outputs/anti_grid_demo  # bundled photos
    python benchmark_anti_periodic.py --semantics original [the original's flags]

Per image it writes every penalty's value (``grid`` the configured penalty, its ``grid_global``
and ``grid_local`` terms, ``grid_coherent`` the opt-in coherent statistic rewards.grid.COHERENT
with the same other options); per penalty the mean on artifacts, the mean on
clean images, their ratio and the ROC-AUC (artifact = positive class, higher penalty = more
artifact-like). Design and measured figures: docs/anti_grid.md. Folders default to the
original's ``artifact`` and ``no_artifact``. ``--semantics original`` runs the original
benchmark instead: its columns, values and file names (docs/original_mode.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from common.checks import check_paths
from common.cli import UserError as UsageError
from common.cli import (amplitude, finite_float, fraction, jpeg_quality, nonneg_float, nonneg_int,
                        positive_float, positive_int, run_cli, unit_float)
from common.original_flags import (ORIGINAL_DEFAULTS, SEMANTICS, OriginalFlag, add_original_flags,
                                   our_dest, record_given, refusal, resolve_source,
                                   semantics_hint, semantics_of, table)
from common.paths import check_no_overwrite, check_outputs_spare_inputs
from rewards.anchors import DEFAULT_CRISPNESS_FLOOR
from rewards.grid import DEFAULT_MARGINS, MODES, STATISTICS, GridConfig
from rewards.grid_eval import (DEFAULT_OUT, DEFAULT_SUMMARY, GRID_COLOURS, GRID_KINDS, list_folder,
                               run_benchmark, synthesize, write_demo_photos)
from rewards.grid_eval_original import run_original_benchmark
from rewards.grid_original import parse_harmonics

# The original's default folders, relative to the working directory (both modes).
DEFAULT_ARTIFACTS, DEFAULT_CLEAN = Path("artifact"), Path("no_artifact")
ORIGINAL_RESIZE = 512
GRID = GridConfig()   # our flags' defaults are the penalty's own


def _resize(group, flag: OriginalFlag) -> None:
    group.add_argument(flag.name, dest="original_resize", type=nonneg_int, default=None,
                       metavar="N", help=f"with --semantics original: {flag.note}")


def build_parser(semantics: str = "ours") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--semantics", default="ours", choices=SEMANTICS,
                   help="original: the original benchmark (its nine columns and values, square "
                        "resize, sub-folders, its file names anti_periodic_per_image.csv / "
                        "anti_periodic_summary.csv and defaults); docs/original_mode.md")
    io = p.add_argument_group("folders")
    io.add_argument("--artifacts_dir", type=Path,
                    help=f"folder of images with grid artifacts (positives; default "
                         f"{DEFAULT_ARTIFACTS})")
    io.add_argument("--clean_dir", type=Path,
                    help=f"folder of clean images (negatives; default {DEFAULT_CLEAN})")
    io.add_argument("--out", type=Path, default=None,
                    help=f"per-image CSV, every penalty's value (default: {DEFAULT_OUT}; with "
                         "--demo: OUT_DIR/per_image.csv)")
    io.add_argument("--summary_out", type=Path, default=None,
                    help=f"summary CSV: means, ratio, ROC-AUC per penalty (default: "
                         f"{DEFAULT_SUMMARY}; with --demo: OUT_DIR/summary.csv)")
    io.add_argument("--plot", type=Path, help="write a ROC + histogram PNG here")
    io.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                    help="search the folders' sub-folders too, as the original did (the images "
                         "found per sub-folder are printed); --no-recursive: top level only")
    io.add_argument("--no_progress", action="store_true", help="hide the progress bars")

    syn = p.add_argument_group("synthesis (--synthesize_from DIR --synth_out DIR)")
    syn.add_argument("--synthesize_from", type=Path, help="clean photos to add grid artifacts to")
    syn.add_argument("--synth_out", type=Path,
                     help="where the synthetic artifact set is written (not --synthesize_from: "
                          "inputs are never written over)")
    syn.add_argument("--synth_periods", type=positive_int, nargs="+", default=[8, 16, 32],
                     help="grid periods in px (default: 8 16 32)")
    syn.add_argument("--synth_amplitudes", type=amplitude, nargs="+", default=[0.005, 0.01, 0.02, 0.04],
                     help="peak grid amplitudes in [0,1] pixel units (default: 0.005 0.01 0.02 0.04)")
    syn.add_argument("--synth_kinds", nargs="+", default=list(GRID_KINDS), choices=GRID_KINDS,
                     help="grid kinds, one drawn at random per image (default: all)")
    syn.add_argument("--synth_colours", nargs="+", default=list(GRID_COLOURS),
                     choices=GRID_COLOURS,
                     help="luma (every channel, slight tint) and/or chroma (colour without luma) "
                          "grids; each photo gets every combination with each (default: both)")
    syn.add_argument("--synth_jpeg", type=jpeg_quality, nargs="+", default=[0, 90],
                     help="JPEG qualities; 0 = lossless PNG (default: 0 90)")
    syn.add_argument("--synth_variants", type=positive_int, default=None,
                     help="random combinations per photo (default: every period x amplitude x JPEG)")
    syn.add_argument("--seed", type=int, default=0, help="random seed of kinds and phases")

    g = p.add_argument_group("grid penalty (rewards.grid; defaults are GridConfig's)")
    g.add_argument("--statistic", default=GRID.statistic, choices=STATISTICS,
                   help="global term: coherent (each tooth's coefficient over windows side by "
                        "side, inverse-variance weighted) or ring (tooth vs its 8 neighbours in "
                        f"the whole image's spectrum) (default {GRID.statistic})")
    g.add_argument("--mode", default=GRID.mode, choices=MODES,
                   help="the grid column: global term, local term (top windows) or combined "
                        f"= global + --local_weight x local (default {GRID.mode}); the "
                        "grid_global and grid_local columns are always written")
    g.add_argument("--period", type=positive_float, default=GRID.period,
                   help=f"grid period in px (default {GRID.period:g})")
    g.add_argument("--extra_periods", type=positive_float, nargs="*",
                   default=list(GRID.extra_periods),
                   help="other periods covered by the comb (default: "
                        f"{' '.join(f'{q:g}' for q in GRID.extra_periods)}; none: just --period)")
    g.add_argument("--max_harm", type=nonneg_int, default=GRID.max_harm,
                   help=f"harmonics per period; 0 = every one below Nyquist (default {GRID.max_harm})")
    g.add_argument("--sigma_bins", type=positive_float, default=GRID.sigma_bins,
                   help="Gaussian weight (FFT bins) of a tooth that falls between bins; unused when "
                        f"the image holds whole periods (default {GRID.sigma_bins:g})")
    g.add_argument("--tau", type=finite_float, default=GRID.tau,
                   help=f"hinge threshold (default {GRID.tau:g})")
    g.add_argument("--eval_resize", type=nonneg_int, default=GRID.eval_resize,
                   help=f"downscale so the long side is at most this; 0 = never (default "
                        f"{GRID.eval_resize})")
    g.add_argument("--local_window", type=positive_int, default=GRID.local_window,
                   help=f"local window px (default {GRID.local_window})")
    g.add_argument("--local_stride", type=positive_int, default=GRID.local_stride,
                   help=f"local stride px (default {GRID.local_stride}: side by side)")
    g.add_argument("--min_amplitude", type=positive_float, default=GRID.min_amplitude,
                   help=f"energy floor: a tone this weak counts as nothing (default {GRID.min_amplitude:g})")
    g.add_argument("--margin", type=nonneg_float, default=None,
                   help="log-evidence a comb tooth needs before it counts (default: the "
                        "statistic's, " + ", ".join(f"{k} {v[0]:g}" for k, v in DEFAULT_MARGINS.items())
                        + "; colour keeps its own)")
    g.add_argument("--ring", type=positive_float, nargs=2, default=list(GRID.ring),
                   metavar=("INNER", "OUTER"),
                   help="neighbour ring of the ring statistic, Chebyshev bins (default "
                        f"{GRID.ring[0]:g} {GRID.ring[1]:g})")
    g.add_argument("--period_temperature", type=nonneg_float, default=GRID.period_temperature,
                   help=f"soft max over the periods' scores; 0 = hard max (default {GRID.period_temperature:g})")
    g.add_argument("--local_top", type=fraction, default=GRID.local_top,
                   help=f"local score = mean of this top fraction of windows (default {GRID.local_top:g})")
    g.add_argument("--local_weight", type=nonneg_float, default=GRID.local_weight,
                   help=f"combined = global + local_weight * local (default {GRID.local_weight:g})")

    b = p.add_argument_group(
        "the original project's penalties as baseline columns (rewards/grid_original.py; they "
        "use --period, --max_harm (0: 3, the original trainer's default), --sigma_bins, "
        "--eval_resize, --local_window/--local_stride and --tau too)")
    b.add_argument("--no_baselines", action="store_true",
                   help="skip the baseline columns (fft_global ... original_trainer); faster")
    b.add_argument("--edge_penalty", type=nonneg_float, default=8.0,
                   help="local_adaptive: window weight 1/(1 + edge_penalty * mean Sobel magnitude)")
    b.add_argument("--template_16", type=Path, default=None,
                   help="image of one grid tile (e.g. 16x16) for the template column (default: "
                        "no template column)")
    b.add_argument("--combo_mode", default="ratio", choices=["ratio", "abs"],
                   help="combo: comb/background ratios (Hann-windowed) or absolute energies")
    b.add_argument("--w_local", type=nonneg_float, default=0.2, help="combo = global + w_local * local")
    b.add_argument("--tau_global", type=finite_float, default=0.0, help="combo: hinge of the global part")
    b.add_argument("--tau_local", type=finite_float, default=0.0, help="combo: hinge of the local part")
    b.add_argument("--selective_top_p", type=fraction, default=0.35,
                   help="selective_local: mean over this top fraction of windows")
    b.add_argument("--selective_coverage_alpha", type=unit_float, default=0.5,
                   help="selective_local = (1 - alpha) * top mean + alpha * share of windows "
                        "above the margin")
    b.add_argument("--proj_harmonics", default="1,2,3",
                   help="proj_cosine / amp_hinge: harmonics of --period, comma-separated")
    b.add_argument("--proj_top_p", type=fraction, default=0.35,
                   help="proj_cosine: mean over this top fraction of windows")
    b.add_argument("--no_proj_detach_norm", action="store_true",
                   help="proj_cosine: let gradients flow through the profile norm (values unchanged)")

    a = p.add_argument_group("anchors (rewards.anchors)")
    a.add_argument("--brightness_target", type=finite_float, default=0.45, help="mean luma target")
    a.add_argument("--brightness_band", type=finite_float, default=0.08, help="half-width of the zero band")
    a.add_argument("--crispness_floor", type=positive_float, default=None,
                   help="Tenengrad floor (default: rewards.anchors.DEFAULT_CRISPNESS_FLOOR)")
    a.add_argument("--crispness_resize", type=nonneg_int, default=512,
                   help="long side the crispness is measured at (default 512)")

    d = p.add_argument_group("demo")
    d.add_argument("--demo", action="store_true",
                   help="bundled scikit-image photos -> synthetic artifacts -> benchmark, in --out_dir")
    d.add_argument("--out_dir", type=Path, default=Path("outputs/anti_grid_demo"),
                   help="demo output folder (default outputs/anti_grid_demo)")
    add_original_flags(p, "benchmark", {"--resize": _resize})  # --window, --hop: old names
    if semantics == "original":
        p.set_defaults(**ORIGINAL_DEFAULTS["benchmark"], semantics="original", tau=None,
                       tau_global=None, tau_local=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, "benchmark_anti_periodic.py")


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    semantics = semantics_of(argv)
    parser = build_parser(semantics)
    given = record_given(parser)
    args = parser.parse_args(argv)
    resolve_source(given)   # --window beside --local_window ...: they must agree (one line)
    if args.semantics == "original":
        return _original(args, {s.name for s in given if s.dest not in ORIGINAL_READS})
    if args.original_resize is not None:
        raise UsageError(refusal(next(f for f in table("benchmark") if f.name == "--resize")))
    if args.brightness_band < 0:
        parser.error("--brightness_band must be >= 0")
    if args.eval_resize and args.eval_resize < 32:
        parser.error("--eval_resize must be 0 or >= 32")
    if args.crispness_floor is None:
        args.crispness_floor = DEFAULT_CRISPNESS_FLOOR
    # every path a flag names, before any image is scored (one line naming the flag)
    check_paths([("--artifacts_dir", "dir", args.artifacts_dir),
                 ("--clean_dir", "dir", args.clean_dir),
                 ("--synthesize_from", "dir", args.synthesize_from),
                 ("--template_16", "image", args.template_16)])
    if args.demo:
        out = args.out_dir
        clean_dir, art_dir = out / "clean", out / "artifacts"
        t0 = time.perf_counter()
        clean = write_demo_photos(clean_dir)
        synthesize(clean, art_dir, args.synth_periods, args.synth_amplitudes, args.synth_kinds,
                   args.synth_jpeg, args.synth_variants, args.seed, not args.no_progress,
                   args.synth_colours)
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
        # The synthetic set never goes over or among the clean photos it is made from.
        check_outputs_spare_inputs({"--synth_out": args.synth_out},
                                   {"--synthesize_from": args.synthesize_from})
        clean = list_folder(args.synthesize_from, "--synthesize_from", args.recursive)
        check_no_overwrite([args.synth_out / "manifest.csv"], clean, "--synth_out")
        manifest = synthesize(clean, args.synth_out, args.synth_periods, args.synth_amplitudes,
                              args.synth_kinds, args.synth_jpeg, args.synth_variants, args.seed,
                              not args.no_progress, args.synth_colours)
        print(f"wrote {len(manifest)} artifact images to {args.synth_out}")
        if args.artifacts_dir is None and args.clean_dir is None:
            return 0
    args.artifacts_dir = args.artifacts_dir or DEFAULT_ARTIFACTS
    args.clean_dir = args.clean_dir or DEFAULT_CLEAN
    args.out = args.out or DEFAULT_OUT                  # our names; the original's are its own
    args.summary_out = args.summary_out or DEFAULT_SUMMARY
    run_benchmark(args, args.artifacts_dir, args.clean_dir)
    hint = semantics_hint(argv, "benchmark")   # after the work: errors stay one line
    if hint:
        print(f"benchmark_anti_periodic.py: note: {hint}", file=sys.stderr)
    return 0


# What the original benchmark reads: its own flags (the table) and how folders are searched.
ORIGINAL_READS = ({our_dest(f) for f in table("benchmark")}
                  | {"original_resize", "semantics", "recursive", "no_progress"})


def _original(args, ours_only: set[str]) -> int:
    """--semantics original: the original benchmark (rewards/grid_eval_original.py)."""
    if ours_only:   # never silently unused (--eval_resize: the original's is --resize)
        raise UsageError(f"{', '.join(sorted(ours_only))} belong to our benchmark; the original's "
                         f"(--semantics original) has no such flag: drop it, or drop "
                         f"--semantics original")
    args.resize = ORIGINAL_RESIZE if args.original_resize is None else args.original_resize
    args.artifacts_dir = args.artifacts_dir or DEFAULT_ARTIFACTS
    args.clean_dir = args.clean_dir or DEFAULT_CLEAN
    try:
        args.proj_harmonics_parsed = parse_harmonics(args.proj_harmonics)
    except ValueError as exc:
        raise UsageError(f"--proj_harmonics: {exc}") from None
    run_original_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
