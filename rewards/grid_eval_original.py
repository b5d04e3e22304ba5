"""``benchmark_anti_periodic.py --semantics original``: the original benchmark, its files.

What the original ``benchmark_anti_periodic.py`` did (docs/original_mode.md, "Benchmark";
values checked against its own code in ``tests/data/original_reference.json``):

* images: every file with a .jpg .jpeg .png .webp .bmp extension under ``--artifacts_dir``
  (default ``artifact``) and ``--clean_dir`` (default ``no_artifact``), sub-folders included,
  in sorted order; each read as RGB and resized with PIL's bicubic filter to a
  ``resize x resize`` square (``--resize 0`` keeps the size);
* per image the nine columns of :func:`rewards.anti_periodic_original.benchmark_columns`;
* ``--out`` (default ``anti_periodic_per_image.csv``): ``group`` (artifacts / clean),
  ``image`` (the file name only), the columns; rows sorted by group, then name;
* ``--summary_out`` (default ``anti_periodic_summary.csv``): per column the mean over
  artifacts, over clean images, and their ratio (empty where undefined).
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch

from common.cli import UserError
from common.paths import check_no_overwrite

from .anti_periodic_original import COLUMNS, BenchmarkSettings, benchmark_columns

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
OUT = Path("anti_periodic_per_image.csv")
SUMMARY_OUT = Path("anti_periodic_summary.csv")
GROUPS = (("artifacts", "--artifacts_dir"), ("clean", "--clean_dir"))


def list_original(folder: Path, flag: str, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``folder`` at any depth (the original's rglob; top level only
    with ``recursive=False``)."""
    if not folder.is_dir():
        raise UserError(f"{flag}: folder not found: {folder}")
    found = folder.rglob("*") if recursive else folder.glob("*")
    return [p for p in sorted(found) if p.is_file() and p.suffix.lower() in EXTENSIONS]


def load_original(path: Path, resize: int) -> torch.Tensor:
    """(1,3,H,W) in [0, 1] as the original benchmark loaded it."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if resize and resize > 0:
            img = img.resize((resize, resize), Image.BICUBIC)
        arr = np.asarray(img).astype("float32") / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def load_template(path: Path, period: int) -> torch.Tensor:
    """The 16 x 16 grey template (0..255) as the original read it."""
    from PIL import Image

    if period != 16:
        raise UserError(f"--template_16 needs --period 16 (the template is one 16 x 16 tile); "
                        f"the original failed on every image with --period {period}")
    if not path.is_file():
        raise UserError(f"--template_16: file not found: {path}")
    with Image.open(path) as img:
        tile = img.convert("L").resize((16, 16), Image.BICUBIC)
        return torch.from_numpy(np.asarray(tile).astype("float32"))


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows([[_cell(v) for v in r] for r in rows])


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summarise_original(rows: list[dict]) -> list[list]:
    out = []
    for col in COLUMNS:
        m_a = _mean([r[col] for r in rows if r["group"] == "artifacts"])
        m_c = _mean([r[col] for r in rows if r["group"] == "clean"])
        ratio = (m_a / m_c if not (math.isnan(m_a) or math.isnan(m_c)) and m_c != 0
                 else float("nan"))
        out.append([col, m_a, m_c, ratio])
    return out


def run_original_benchmark(args) -> list[list]:
    """Score both folders as the original benchmark did; write its two CSV files."""
    period = int(args.period)
    if period != args.period:
        raise UserError(f"--period must be a whole number of pixels with --semantics original, "
                        f"got {args.period}")
    settings = BenchmarkSettings(
        period=period, max_harm=args.max_harm, sigma_bins=args.sigma_bins,
        window=args.local_window, hop=args.local_stride, edge_penalty=args.edge_penalty,
        tau=args.tau, combo_mode=args.combo_mode, w_local=args.w_local,
        tau_global=args.tau_global, tau_local=args.tau_local,
        selective_top_p=args.selective_top_p,
        selective_coverage_alpha=args.selective_coverage_alpha,
        proj_harmonics=tuple(args.proj_harmonics_parsed), proj_top_p=args.proj_top_p,
        proj_detach_norm=not args.no_proj_detach_norm)
    template = (load_template(Path(args.template_16), period)
                if args.template_16 is not None else None)
    folders = {"artifacts": Path(args.artifacts_dir), "clean": Path(args.clean_dir)}
    paths = {g: list_original(folders[g], flag, getattr(args, "recursive", True))
             for g, flag in GROUPS}
    out, summary_out = Path(args.out or OUT), Path(args.summary_out or SUMMARY_OUT)
    for flag, path in (("--out", out), ("--summary_out", summary_out)):
        check_no_overwrite([path], paths["artifacts"] + paths["clean"], flag)
    rows = []
    for group, _ in GROUPS:
        for p in paths[group]:
            try:
                x = load_original(p, args.resize)
            except (OSError, ValueError) as exc:
                print(f"skipped {p}: {exc}", file=sys.stderr)
                continue
            rows.append({"group": group, "image": p.name,
                         **benchmark_columns(x, settings, template)})
    if not rows:
        raise UserError("no image could be read in --artifacts_dir or --clean_dir")
    rows.sort(key=lambda r: (r["group"], r["image"]))
    header = ["group", "image", *COLUMNS]
    _write(out, header, [[r[k] for k in header] for r in rows])
    summary = summarise_original(rows)
    _write(summary_out, ["loss", "mean_artifacts", "mean_clean", "artifact/clean"], summary)
    for r in rows:
        print(" ".join([r["group"], r["image"], *(f"{r[c]:.6g}" for c in COLUMNS)]))
    print(f"wrote {out} (per image) and {summary_out} (summary)")
    return summary


__all__ = ["run_original_benchmark", "summarise_original", "list_original", "load_original",
           "load_template", "OUT", "SUMMARY_OUT"]
