"""internvl_scorer.py end to end on the tiny model (subprocess, as a user runs it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    from PIL import Image
    from skimage import data
    d = tmp_path_factory.mktemp("pics")
    Image.fromarray(data.astronaut()).resize((80, 80)).save(d / "a.png")
    Image.fromarray(data.chelsea()).resize((90, 60)).save(d / "b.jpg")
    Image.fromarray(data.coffee()).resize((72, 72)).save(d / "c.png")
    (d / "broken.jpg").write_bytes(b"not an image")
    return d


def scorer(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "internvl_scorer.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.slow
def test_pair_json_with_probs_is_antisymmetric(pics):
    out = scorer(pics / "a.png", pics / "b.jpg", pics / "b.jpg", pics / "a.png", "--task", "pair",
                 "--model_id", "tiny", "--print_probs", "--format", "json", "--batch_size", "1")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [Path(r["image_a"]).name for r in rows] == ["a.png", "b.jpg"]
    assert rows[0]["score"] + rows[1]["score"] == pytest.approx(1.0, abs=1e-6)
    probs = {k: v for k, v in rows[0].items() if k.startswith("AB p(")}
    assert set(probs) == {"AB p(1)", "AB p(2)"} and sum(probs.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_folder_single_csv_and_gradient_heatmaps(pics, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (folder / name).write_bytes((pics / name).read_bytes())
    heat = tmp_path / "heat"
    out = scorer(folder, "--model_id", "tiny", "--format", "csv", "--viz_grads", heat,
                 "--calibration", "pmi_null")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "image,score" and len(lines) == 4
    assert all(0.0 <= float(line.split(",")[1]) <= 1.0 for line in lines[1:])
    from PIL import Image
    files = sorted(p.name for p in heat.iterdir())
    assert files == sorted(f"{stem}_{kind}.png" for stem in ("0000_1_a", "0001_1_b", "0002_1_c")
                           for kind in ("input", "grad", "overlay"))
    # input, gradient and overlay per image, each at the image's own size
    assert Image.open(heat / "0001_1_b_overlay.png").size == (90, 60)
    inp = np.asarray(Image.open(heat / "0000_1_a_input.png"), dtype=float)
    assert np.abs(inp - np.asarray(Image.open(pics / "a.png").convert("RGB"), dtype=float)).max() <= 1
    over = np.asarray(Image.open(heat / "0000_1_a_overlay.png"), dtype=float)
    assert np.abs(over - inp).mean() > 5
    grad = np.asarray(Image.open(heat / "0000_1_a_grad.png"), dtype=float)
    assert grad.std() > 1 and (grad[..., 0] == grad[..., 1]).all()  # a gray gradient map


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["a.png", "b.jpg", "c.png", "--task", "pair"], "takes images in pairs"),
    (["a.png", "b.jpg", "--task", "triplet"], "multiple of 3"),
    (["broken.jpg"], "broken.jpg"),
    (["missing.png"], "no such file"),
    (["a.png", "--batch_size", "0"], "--batch_size must be >= 1"),
])
def test_user_errors_exit_2_without_traceback(pics, args, message):
    args = [pics / a if a.endswith((".png", ".jpg")) else a for a in args]
    out = scorer(*args, "--model_id", "tiny")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_in_process_main_errors_and_reference(pics, capsys):
    """Faster in-process checks of main(): missing default model, triplet with --reference."""
    sys.path.insert(0, str(ROOT))
    import internvl_scorer
    assert internvl_scorer.main([str(pics / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "OpenGVLab/InternVL3-14B-hf" in err and "--model_id" in err
    assert internvl_scorer.main([str(pics / "a.png"), str(pics / "c.png"), "--task", "triplet",
                                 "--reference", str(pics / "b.jpg"), "--model_id", "tiny",
                                 "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert Path(row["reference"]).name == "b.jpg" and 0 <= row["score"] <= 1
    assert internvl_scorer.main([str(pics / "a.png"), "--model_id", "tiny",
                                 "--prompt", "Is it nice?"]) == 0
    assert "does not mention the answer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        internvl_scorer.main([str(pics / "a.png"), "--task", "nope"])
    assert info.value.code == 2
