"""End-to-end behaviour of benchmark_anti_periodic.py (synthesis, scoring, CSVs, errors)."""
import csv

import numpy as np
import pytest
import torch

import benchmark_anti_periodic as cli
import rewards.grid_eval as bench
from common.images import save_image


def test_roc_auc_matches_hand_computed_case():
    # pairs (pos > neg): 0.9 beats 3, 0.8 beats 3, 0.4 beats 0.1 and ties 0.4 -> 7.5 / 9
    assert bench.roc_auc([0.9, 0.8, 0.4], [0.5, 0.4, 0.1]) == pytest.approx(7.5 / 9)
    assert bench.roc_auc([1, 2], [3, 4]) == 0.0
    assert bench.roc_auc([5, 5], [5]) == 0.5
    assert np.isnan(bench.roc_auc([], [1.0]))


def test_grid_pattern_is_zero_mean_unit_peak_and_periodic():
    rng = np.random.default_rng(0)
    for kind in bench.GRID_KINDS:
        p = bench.grid_pattern(64, 80, 16, kind, rng)
        assert abs(p.mean()) < 1e-9 and np.abs(p).max() == pytest.approx(1.0)
        assert np.allclose(p[:, :-16], p[:, 16:]) and np.allclose(p[:-16], p[16:])


@pytest.fixture()
def folders(tmp_path):
    import skimage.data

    clean = tmp_path / "clean"
    for i, name in enumerate(("camera", "coins", "moon", "brick")):
        arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        img = torch.from_numpy(arr[:160, :192]).expand(3, -1, -1).clone()
        save_image(img, clean / f"{name}.png")
    return tmp_path, clean


def test_cli_synthesize_then_benchmark(folders, capsys):
    tmp, clean = folders
    art = tmp / "art"
    rc = cli.main(["--synthesize_from", str(clean), "--synth_out", str(art), "--synth_periods", "16",
                     "--synth_amplitudes", "0.04", "--synth_jpeg", "0", "90", "--synth_kinds", "tile",
                     "--no_progress"])
    assert rc == 0
    # every photo x PNG/JPEG x luma/colour-only: 4% grids survive JPEG q=90, none is dropped
    assert len(list(art.glob("*.png"))) == 8 and len(list(art.glob("*.jpg"))) == 8
    assert len(list(art.glob("*_chroma.*"))) == 8
    (art / "broken.png").write_bytes(b"not an image")
    out, summ, roc = tmp / "per_image.csv", tmp / "summary.csv", tmp / "roc.png"
    rc = cli.main(["--artifacts_dir", str(art), "--clean_dir", str(clean), "--out", str(out),
                     "--summary_out", str(summ), "--plot", str(roc), "--no_progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "broken.png" in captured.err and "skipped" in captured.err
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 20
    assert set(bench.PENALTY_COLUMNS) <= set(rows[0])
    summary = {r["penalty"]: r for r in csv.DictReader(open(summ))}
    from rewards.grid_original import (
        COLUMNS as BASELINES,  # the original's, beside ours
    )

    assert set(summary) == set(bench.PENALTY_COLUMNS) | (set(BASELINES) - {"template"})
    assert {"mean_artifact", "mean_clean", "ratio", "auc"} <= set(summary["grid"])
    assert float(summary["grid"]["auc"]) == 1.0          # 4% VAE-like tile grids are easy
    assert float(summary["grid"]["mean_artifact"]) > float(summary["grid"]["mean_clean"])
    assert roc.stat().st_size > 1000
    assert "ROC-AUC" in captured.out


def test_cli_errors_are_one_line_exit_code_2(folders, capsys):
    tmp, clean = folders
    empty = tmp / "empty"
    empty.mkdir()
    assert cli.main(["--artifacts_dir", str(empty), "--clean_dir", str(clean)]) == 2
    err = capsys.readouterr().err
    assert "no images found" in err and "Traceback" not in err
    assert cli.main(["--artifacts_dir", str(tmp / "missing"), "--clean_dir", str(clean)]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["--synthesize_from", str(clean)]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["--artifacts_dir", str(clean), "--clean_dir", str(clean), "--synth_amplitudes", "2"])
    assert exc.value.code == 2


def test_cli_exit_code_from_a_subprocess(folders):
    import subprocess
    import sys
    from pathlib import Path

    tmp, _ = folders
    root = Path(cli.__file__).resolve().parent
    proc = subprocess.run([sys.executable, str(root / "benchmark_anti_periodic.py"), "--artifacts_dir",
                           str(tmp / "nope"), "--clean_dir", str(tmp / "nope")],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 2
    assert "error: --artifacts_dir" in proc.stderr and "Traceback" not in proc.stderr


def test_chroma_grid_has_no_luma_and_the_default_penalty_sees_it():
    from rewards.grid import GridPenalty, luminance

    import skimage.data

    rng = np.random.default_rng(3)
    x = torch.from_numpy(np.asarray(skimage.data.coffee(), dtype=np.float32) / 255.0)
    x = x.permute(2, 0, 1)[:, :256, :256].contiguous()
    signal = bench.grid_signal(x.shape, 16, 0.02, "sinusoid", rng, "chroma")
    assert luminance(signal[None]).abs().max() < 1e-6          # colour only
    assert signal.abs().amax() == pytest.approx(0.02, rel=1e-5)
    dirty = (x + signal).clamp(0, 1)[None]
    clean = x[None]
    luma_only = GridPenalty(chroma=False)
    assert luma_only(dirty)[0].item() == pytest.approx(luma_only(clean)[0].item(), abs=0.05)
    seen, base = GridPenalty()(dirty)[0].item(), GridPenalty()(clean)[0].item()
    assert seen > base + 0.3 and seen > 3 * base


def test_a_grid_the_format_erased_is_not_written_as_an_artifact(tmp_path):
    # JPEG q=90 quantises a 0.5 % colour-only grid on a grey photo away entirely for some
    # colour directions (seed 2's; others it keeps, coarsened)
    import skimage.data

    clean = tmp_path / "clean"
    arr = np.asarray(skimage.data.moon(), dtype=np.float32)[:128, :128] / 255.0
    save_image(torch.from_numpy(arr).expand(3, -1, -1).clone(), clean / "moon.png")
    kept = bench.synthesize([clean / "moon.png"], tmp_path / "art", periods=(16,),
                            amplitudes=(0.005,), kinds=("sinusoid",), jpeg_qualities=(90,),
                            variants=None, seed=2, progress=False, colours=("luma", "chroma"))
    names = {m["file"] for m in kept}
    assert "moon_p16_a0.5_sinusoid_q90_chroma.jpg" not in names
    assert not (tmp_path / "art" / "moon_p16_a0.5_sinusoid_q90_chroma.jpg").exists()
    assert names == {"moon_p16_a0.5_sinusoid_q90.jpg"}      # the luma grid survives
    rows = list(csv.DictReader(open(tmp_path / "art" / "manifest.csv")))
    dropped = [r for r in rows if r["dropped"]]
    assert len(dropped) == 1 and float(dropped[0]["grid_kept"]) < bench.MIN_GRID_KEPT
    assert all(float(r["grid_kept"]) > 0.5 for r in rows if not r["dropped"])
