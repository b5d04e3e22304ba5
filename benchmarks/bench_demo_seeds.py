#!/usr/bin/env python
"""Does the demo hold for any seed? Runs ``python -m alignprop.demo`` (or, with ``--demo vlm``,
``python -m alignprop.demo_vlm``) for several training seeds and prints every check of every
seed (the demo's: on both held-out sets).

    PYTHONPATH=. python benchmarks/bench_demo_seeds.py [--demo {demo,vlm}] [--seeds 0 1 2 3 4]
                                                       [--out_dir outputs/demo_seeds]
                                                       [-- DEMO FLAGS]

Each seed runs in its own process (the demo's own command, 1 torch thread), into
``OUT_DIR/seed_N``; the table is read from each ``demo_summary.json``. Exit status 0 only
when every check of every seed passes. About 1-2 minutes per seed on a 2-core CPU.
Flags after ``--`` go to every seed's demo command (``--demo vlm -- --shift_views 4``).
``--from_json OUT_DIR`` re-prints the table of an earlier run without training.
With ``--demo vlm`` the table is the README's demo-vlm seeds table (each run's statistics,
SSIM, grid penalty against its matched edit and failed checks; read from
``demo_vlm_summary.json``; ``--out_dir`` default ``outputs/demo_vlm_seeds``).

A second table gives each seed's grid excess on each set (LoRA grid penalty - the matched
edit's, the grid check's figure; the check allows GRID_TOLERANCE): the mean over the demo's
EVAL_DRAWS noise draws, which the check reads, and the std of one draw's figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.cli import nonneg_int  # noqa: E402
from alignprop.demo import GRID_TOLERANCE  # noqa: E402


# --demo -> (module, extra flags, summary file): the demo's seeds run with --strict (both sets)
DEMOS = {"demo": ("alignprop.demo", ["--strict"], "demo_summary.json"),
         "vlm": ("alignprop.demo_vlm", [], "demo_vlm_summary.json")}


def run_seed(seed: int, out: Path, demo: str = "demo", demo_flags: tuple = ()
             ) -> tuple[int, float]:
    module, extra, _ = DEMOS[demo]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.time()
    with open(out.parent / f"seed_{seed}.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", module, "--seed", str(seed),
                              "--output_dir", str(out)] + extra + list(demo_flags), cwd=ROOT,
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    return rc, time.time() - t0


def read_summary(out_dir: Path, seed: int, demo: str) -> dict | None:
    """The summary ``demo`` wrote for ``seed`` (None when the run left none)."""
    path = out_dir / f"seed_{seed}" / DEMOS[demo][2]
    return json.loads(path.read_text()) if path.is_file() else None


def missing_row(out_dir: Path, seed: int) -> str:
    return f"| {seed} | (no summary: see {out_dir / f'seed_{seed}.log'}) |"


def table(out_dir: Path, seeds: list[int]) -> tuple[str, bool]:
    rows, all_ok = [], True
    names = None
    for seed in seeds:
        s = read_summary(out_dir, seed, "demo")
        if s is None:
            rows.append(missing_row(out_dir, seed))
            all_ok = False
            continue
        sets = s["held_out_sets"]
        if names is None:
            names = [(set_name, check) for set_name in sets for check in sets[set_name]["checks"]]
        cells = []
        for set_name, check in names:
            ok = sets[set_name]["checks"].get(check)
            all_ok &= bool(ok)
            cells.append("PASS" if ok else "**FAIL**")
        rows.append(f"| {seed} | " + " | ".join(cells) + " |")
    header = "| seed | " + " | ".join(f"{n}: {c}" for n, c in (names or [])) + " |"
    sep = "|---" * (1 + len(names or [])) + "|"
    return "\n".join([header, sep] + rows), all_ok


def excess_table(out_dir: Path, seeds: list[int]) -> str:
    """Grid excess (LoRA - matched edit) per seed and set: mean over draws +- one draw's std."""
    rows, names = [], None
    for seed in seeds:
        s = read_summary(out_dir, seed, "demo")
        if s is None:
            continue
        sets = s["held_out_sets"]
        names = names or list(sets)
        cells = []
        for name in names:
            e = sets[name]
            xs = e.get("grid_excess_per_draw") or [e["grid_penalty_after"]
                                                   - e["grid_penalty_matched_edit"]]
            mean = sum(xs) / len(xs)
            sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0
            cells.append(f"{e['grid_penalty_after'] - e['grid_penalty_matched_edit']:+.3f} "
                         f"(one draw: std {sd:.3f}, {len(xs)} draws)")
        rows.append(f"| {seed} | " + " | ".join(cells) + " |")
    header = ("| seed | " + " | ".join(f"{n}: grid excess over matched edit (limit "
                                        f"+{GRID_TOLERANCE})" for n in names or []) + " |")
    return "\n".join([header, "|---" * (1 + len(names or [])) + "|"] + rows)


def vlm_row(seed: int, s: dict) -> str:
    """One seed of `make demo-vlm`: each run's statistics, SSIM, grid vs its matched edit."""
    st, g, gm, ssim = (s["statistics"], s["grid_penalty"], s["grid_penalty_matched_edit"],
                       s["ssim_vs_base"])
    failed = [name for name, ok in s["checks"].items() if not ok]
    return (f"| {seed} | {st['base']['warmth']:+.3f} -> {st['warmth']['warmth']:+.3f} "
            f"({s['moves']['warmth']['brightness']:+.3f}) | {st['base']['brightness']:.3f} -> "
            f"{st['brightness']['brightness']:.3f} ({s['moves']['brightness']['warmth']:+.3f}) "
            f"| {ssim['warmth']:.3f} / {ssim['brightness']:.3f} | {g['base']:.3f} | "
            f"{g['warmth']:.3f} vs {gm['warmth']:.3f} | {g['brightness']:.3f} vs "
            f"{gm['brightness']:.3f} | " + ("all PASS" if not failed else
                                            "FAIL: " + ", ".join(failed)) + " |")


def vlm_table(out_dir: Path, seeds: list[int]) -> tuple[str, bool]:
    lines = ["| seed | warmth run: R-B (luma move) | brightness run: luma (R-B move) | "
             "SSIM vs base (warmth / brightness) | grid penalty, base output | warmth run vs "
             "its matched edit | brightness run vs its matched edit | checks |",
             "|---" * 8 + "|"]
    ok = True
    for seed in seeds:
        s = read_summary(out_dir, seed, "vlm")
        if s is None:
            lines.append(missing_row(out_dir, seed))
            ok = False
            continue
        ok &= all(s["checks"].values())
        lines.append(vlm_row(seed, s))
    return "\n".join(lines), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Flags after -- go to every seed's demo command.")
    ap.add_argument("--demo", choices=sorted(DEMOS), default="demo",
                    help="which demo: 'demo' (make demo) or 'vlm' (make demo-vlm)")
    ap.add_argument("--seeds", type=nonneg_int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="training seeds, one demo run each (default 0 1 2 3 4)")
    ap.add_argument("--out_dir", type=Path, default=None,
                    help="default outputs/demo_seeds (--demo vlm: outputs/demo_vlm_seeds)")
    ap.add_argument("--from_json", action="store_true",
                    help="only print the table of the summaries already in --out_dir")
    # the demo's flags are split off by hand: an argparse positional after "--" is lost
    # when a nargs="+" option (--seeds) comes before it
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    out_dir = args.out_dir or Path("outputs/demo_seeds" if args.demo == "demo"
                                   else "outputs/demo_vlm_seeds")
    if not args.from_json:
        out_dir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            rc, secs = run_seed(seed, out_dir / f"seed_{seed}", args.demo, demo_flags)
            print(f"seed {seed}: exit {rc} in {secs:.0f} s", flush=True)
    if args.demo == "vlm":
        text, ok = vlm_table(out_dir, args.seeds)
        print(text)
    else:
        text, ok = table(out_dir, args.seeds)
        print(text)
        print()
        print(excess_table(out_dir, args.seeds))
    print("every check of every seed passes" if ok else "some check failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
