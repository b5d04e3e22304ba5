#!/usr/bin/env python
"""Does `make demo-vlm` hold for any seed? Runs ``python -m alignprop.demo_vlm`` for several
training seeds and prints the README's seeds table from each run's summary.

    PYTHONPATH=. python benchmarks/bench_demo_vlm_seeds.py [--seeds 0 1 2 3 4]
                                                           [--out_dir outputs/demo_vlm_seeds]

Each seed runs in its own process (the demo's own command, 1 torch thread) into
``OUT_DIR/seed_N``; ``--from_json`` re-prints the table of an earlier run without training.
Exit status 0 only when every check of every seed passes. About 1.5-3 minutes per seed on
a 2-core CPU.
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


def run_seed(seed: int, out: Path) -> tuple[int, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.time()
    with open(out.parent / f"seed_{seed}.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "alignprop.demo_vlm", "--seed", str(seed),
                              "--output_dir", str(out)], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    return rc, time.time() - t0


def row(seed: int, s: dict) -> str:
    st, g, gm, ssim = s["statistics"], s["grid_penalty"], s["grid_penalty_matched_edit"], \
        s["ssim_vs_base"]
    failed = [name for name, ok in s["checks"].items() if not ok]
    return (f"| {seed} | {st['base']['warmth']:+.3f} -> {st['warmth']['warmth']:+.3f} "
            f"({s['moves']['warmth']['brightness']:+.3f}) | {st['base']['brightness']:.3f} -> "
            f"{st['brightness']['brightness']:.3f} ({s['moves']['brightness']['warmth']:+.3f}) "
            f"| {ssim['warmth']:.3f} / {ssim['brightness']:.3f} | {g['base']:.3f} | "
            f"{g['warmth']:.3f} vs {gm['warmth']:.3f} | {g['brightness']:.3f} vs "
            f"{gm['brightness']:.3f} | " + ("all PASS" if not failed else
                                            "FAIL: " + ", ".join(failed)) + " |")


def table(out_dir: Path, seeds: list[int]) -> tuple[str, bool]:
    lines = ["| seed | warmth run: R-B (luma move) | brightness run: luma (R-B move) | "
             "SSIM vs base (warmth / brightness) | grid penalty, base output | warmth run vs "
             "its matched edit | brightness run vs its matched edit | checks |",
             "|---" * 8 + "|"]
    ok = True
    for seed in seeds:
        path = out_dir / f"seed_{seed}" / "demo_vlm_summary.json"
        if not path.is_file():
            lines.append(f"| {seed} | (no summary: see {out_dir / f'seed_{seed}.log'}) |")
            ok = False
            continue
        s = json.loads(path.read_text())
        ok &= all(s["checks"].values())
        lines.append(row(seed, s))
    return "\n".join(lines), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=nonneg_int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out_dir", type=Path, default=Path("outputs/demo_vlm_seeds"))
    ap.add_argument("--from_json", action="store_true",
                    help="only print the table of the summaries already in --out_dir")
    args = ap.parse_args(argv)
    if not args.from_json:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            rc, secs = run_seed(seed, args.out_dir / f"seed_{seed}")
            print(f"seed {seed}: exit {rc} in {secs:.0f} s", flush=True)
    text, ok = table(args.out_dir, args.seeds)
    print(text)
    print("every check of every seed passes" if ok else "some check failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
