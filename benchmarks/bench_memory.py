#!/usr/bin/env python
"""Peak memory of reading large photos: training data, alignprop.evaluate, internvl_scorer.py.

    python benchmarks/bench_memory.py                      # 1 vs 8 photos of 12000x9000
    python benchmarks/bench_memory.py --repo /path/to/old/checkout   # same, other code

Each measurement runs in a fresh process and reports its peak resident set size
(``ru_maxrss``), so the numbers include the Python/torch baseline of that process
(printed as the "0 photos" row where it applies). ``--repo`` runs the commands of
another checkout of this project (e.g. an older commit) for a before/after table.

What the three cases do:
* ``train-data``: ``alignprop.data.ImageFolder(photos, 512, 512)`` and one pass of
  ``load`` over every image (what the trainer does before and during training);
* ``evaluate``: ``python -m alignprop.evaluate --originals_dir photos --lora_dir photos
  --rewards brightness`` (every photo scored as original and as output, compared with its
  original);
* ``scorer``: ``internvl_scorer.py photos --model_id tiny`` (the built-in tiny InternVL).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.cli import positive_int  # noqa: E402

TRAIN_DATA = """
import sys
from alignprop.data import ImageFolder
f = ImageFolder(sys.argv[1], 512, 512, "x")
for i in range(len(f)):
    f.load(i)
"""


def make_photos(folder: Path, n: int, width: int, height: int) -> None:
    """``n`` copies of one large JPEG (smooth colour fields plus noise, like a detailed photo;
    copies: memory depends on the size, not the content, and making one is slow)."""
    import shutil

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    master = folder.parent / f"master_{width}x{height}.jpg"
    if not master.exists():
        rng = np.random.default_rng(0)
        y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
        img = np.empty((height, width, 3), np.uint8)
        for c in range(3):
            field = 0.5 + 0.4 * np.sin(6.28 * ((c + 1) * x + (3 - c) * y))
            noise = rng.integers(-20, 21, (height, width), dtype=np.int16)
            img[..., c] = np.clip(field * 255 + noise, 0, 255)
        Image.fromarray(img).save(master, quality=90)
    for i in range(n):
        path = folder / f"photo_{i}.jpg"
        if not path.exists():
            shutil.copyfile(master, path)


def peak_rss_mib(cmd: list[str], repo: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``cmd`` run in a fresh process inside ``repo``."""
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TRANSFORMERS_OFFLINE="1")
    wrapper = ("import resource, subprocess, sys, json, time; t = time.time(); "
               "rc = subprocess.run(sys.argv[1:]).returncode; "
               "print(json.dumps({'rc': rc, 'kb': resource.getrusage(resource.RUSAGE_CHILDREN)"
               ".ru_maxrss, 's': time.time() - t}))")
    out = subprocess.run([sys.executable, "-c", wrapper] + cmd, cwd=repo, env=env,
                         capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return result["kb"] / 1024, result["s"]


def case_cmd(case: str, photos: Path, work: Path) -> list[str]:
    py = sys.executable
    if case == "train-data":
        return [py, "-c", TRAIN_DATA, str(photos)]
    if case == "evaluate":
        return [py, "-m", "alignprop.evaluate", "--originals_dir", str(photos), "--lora_dir",
                str(photos), "--rewards", "brightness", "--output_dir", str(work / "eval"),
                "--no_hacking_check", "--plots", "false"]
    if case == "scorer":
        return [py, "internvl_scorer.py", str(photos), "--model_id", "tiny", "--device", "cpu",
                "--format", "csv"]
    raise ValueError(case)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="checkout whose commands are measured")
    p.add_argument("--counts", type=positive_int, nargs="+", default=[1, 8], help="photos per run")
    p.add_argument("--size", type=positive_int, nargs=2, default=[12000, 9000], metavar=("W", "H"))
    p.add_argument("--cases", nargs="+", default=["train-data", "evaluate", "scorer"],
                   choices=["train-data", "evaluate", "scorer"])
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_memory",
                   help="where the synthetic photos are kept between runs")
    args = p.parse_args(argv)
    repo = args.repo.resolve()
    w, h = args.size
    print(f"code: {repo} | photos: {w}x{h} JPEG | peak RSS of a fresh process (MiB)")
    print(f"{'case':<12} " + " ".join(f"{n:>3} photo(s)      " for n in args.counts))
    for case in args.cases:
        cells = []
        for n in args.counts:
            photos = args.cache / f"{w}x{h}_{n}"
            make_photos(photos, n, w, h)
            with tempfile.TemporaryDirectory() as work:
                mib, sec = peak_rss_mib(case_cmd(case, photos, Path(work)), repo)
            cells.append(f"{mib:8.0f} MiB {sec:5.1f}s")
        print(f"{case:<12} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
