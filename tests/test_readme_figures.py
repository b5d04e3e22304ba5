"""README's anti-grid table is what `make demo-grid` measured (media/anti_grid_per_image.csv)."""
import csv
import re
from pathlib import Path

from rewards.grid_eval import roc_auc

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"grid": "`grid` (default, combined)", "grid_global": "global term only",
        "grid_local": "local term only",
        "grid_coherent": "coherent statistic (opt-in: `rewards.grid.COHERENT`)"}
GROUPS = (("all", lambda n: True), ("luma", lambda n: "_chroma" not in n),
          ("colour-only", lambda n: "_chroma" in n), ("p=8", lambda n: "_p8_" in n),
          ("p=16", lambda n: "_p16_" in n), ("p=32", lambda n: "_p32_" in n),
          ("amp 0.5%", lambda n: "_a0.5_" in n), ("1%", lambda n: "_a1_" in n),
          ("2%", lambda n: "_a2_" in n), ("4%", lambda n: "_a4_" in n),
          ("JPEG q=90", lambda n: n.endswith(".jpg")))


def test_anti_grid_table_matches_the_benchmark_output():
    with open(ROOT / "media" / "anti_grid_per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    art = [r for r in rows if r["label"] == "artifact"]
    clean = [r for r in rows if r["label"] == "clean"]
    assert (len(art), len(clean)) == (835, 18)
    readme = (ROOT / "README.md").read_text()
    for key, label in ROWS.items():
        neg = [float(r[key]) for r in clean]
        cells = [f"{roc_auc([float(r[key]) for r in art if keep(r['file'])], neg):.3f}"
                 for _, keep in GROUPS]
        line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {label} |"))
        stated = [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
        assert stated == cells, (label, stated, cells)
    mean_art = sum(float(r["grid"]) for r in art) / len(art)
    mean_clean = sum(float(r["grid"]) for r in clean) / len(clean)
    assert f"Mean penalty {mean_art:.2f} on artifacts vs {mean_clean:.2f} on clean" in readme
    assert re.search(r"From `make demo-grid`", readme)


def test_judges_tables_are_what_the_benchmark_printed(tmp_path):
    """README's GRPO / D3PO / AlignProp tables are what bench_judges.py prints from its saved run
    (media/bench_judges.json), and the command that made them is named beside them."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_judges.py"),
                           "--from_json", str(ROOT / "media" / "bench_judges.json"),
                           "--plot", str(tmp_path / "plot.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("|", "("))]
    assert len([ln for ln in printed if ln.startswith("| ") and "---" not in ln]) >= 7
    readme = (ROOT / "README.md").read_text()
    for line in printed:
        assert line in readme, line
    assert "benchmarks/bench_judges.py --seeds 0,1,2 --budget_s 90" in readme


def _bench_methods_prints(saved, tmp_path) -> list[str]:
    """What ``bench_methods.py --from_json saved`` prints (its tables), line by line."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_methods.py"),
                           "--from_json", str(saved), "--plot", str(tmp_path / "plot.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


def test_methods_tables_are_what_the_benchmark_printed(tmp_path):
    """README's and docs/methods.md's method tables (the learning-rate sweep, the test
    rewards over 5 seeds, the tie lines) are what bench_methods.py prints from its saved run
    (media/bench_methods.json), and the command that made them is named beside them."""
    import json

    saved = ROOT / "media" / "bench_methods.json"
    data = json.loads(saved.read_text())
    tests = [r for r in data["runs"] if r["role"] == "test"]
    assert len({r["seed"] for r in tests}) >= 5 and data["config"]["noise_draws"] >= 2
    printed = [ln for ln in _bench_methods_prints(saved, tmp_path)
               if ln.startswith(("|", "(", "model "))]
    assert len([ln for ln in printed if ln.startswith("| ") and "---" not in ln]) >= 12
    assert any("tied with it" in ln or "no tie" in ln for ln in printed)
    for doc in ("README.md", "docs/methods.md"):
        text = (ROOT / doc).read_text()
        for line in printed:
            assert line in text, (doc, line)
        assert "benchmarks/bench_methods.py --from_json media/bench_methods.json" in text
        assert "nice -n 10 env PYTHONPATH=. python benchmarks/bench_methods.py" in text


def test_sweep_edge_table_is_what_the_wider_sweeps_printed(tmp_path):
    """The wider learning-rate sweeps (README and docs/methods.md, 'Sweep edges, re-checked')
    are what bench_methods.py prints from their saved runs: each cell of the merged table is the
    validation reward one of the two runs printed for that rate, the best rate is the largest
    reward, and the test figures at the best rate are the printed ones."""
    import json

    sweep: dict[str, dict[float, str]] = {}
    test_rows = {}
    for name in ("bench_methods_edges.json", "bench_methods_imagerefl_low.json"):
        lrs = json.loads((ROOT / "media" / name).read_text())["config"]["lrs"]
        for line in _bench_methods_prints(ROOT / "media" / name, tmp_path):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if line.startswith("| ") and len(cells) == len(lrs) + 2 and cells[-1][:1].isdigit():
                sweep.setdefault(cells[0], {}).update(zip(lrs, cells[1:-1]))
            elif line.startswith("| ") and len(cells) > 8 and cells[1][:1].isdigit():
                test_rows[(cells[0], float(cells[1]))] = cells
    grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    for doc in ("README.md", "docs/methods.md"):
        text = (ROOT / doc).read_text()
        for method, values in sweep.items():
            best = max(values, key=lambda lr: float(values[lr]))
            row = ("| " + " | ".join([method] + [values.get(lr, "-") for lr in grid]
                                     + [f"{best:.0e}".replace("e-0", "e-")]) + " |")
            assert row in text, (doc, row)
            cells = test_rows[(method, best)]
            if method == "ImageReFL":
                assert " / ".join(cells[4:8]) in text.replace("\n", " ").replace("  ", " "), doc
        assert "--lrs 1e-3,3e-3,1e-2,3e-2,1e-1" in text and "--lrs 1e-4,3e-4,1e-3" in text
