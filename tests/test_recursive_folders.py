"""--recursive (default on, as the original) in generate and evaluate: sub-folders are read,
counted per sub-folder, and outputs keep their relative paths, so two ``a.png`` of different
sub-folders never collide (the trainer, scorer and benchmark: tests/test_original_mode.py)."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from alignprop import evaluate, generate


def _png(path, value, h=32, w=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(value * 1000))
    arr = np.clip(value + rng.normal(0, 0.02, (h, w, 3)), 0, 1)
    Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """Two a.png in different sub-folders, one at the top level, one deeper."""
    root = tmp_path / "photos"
    for rel, v in (("a.png", 0.2), ("x/a.png", 0.5), ("y/a.png", 0.8), ("y/z/b.png", 0.4)):
        _png(root / rel, v)
    return root


GEN = ["--pretrained_model", "tiny", "--prompt", "make it blue", "--num_steps", "1"]


def test_generate_reads_sub_folders_and_keeps_their_paths(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate.cli(["--input_dir", str(tree), "--output_dir", str(out), *GEN]) == 0
    err = capsys.readouterr().err
    assert "4 image(s)" in err and "x (1)" in err and "y (1)" in err and "y/z (1)" in err
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")
                     if p.stem != "contact_sheet")
    assert outputs == ["a.png", "x/a.png", "y/a.png", "y/z/b.png"]   # no collision
    # each output is its own input's edit: sizes follow the input, names the relative path
    log = json.loads((out / "generate_log.json").read_text())
    assert sorted(log["outputs"]) == [f"output/seed0/{n}" for n in outputs]
    html = (out / "contact_sheet.html").read_text()
    assert 'src="x/a.png"' in html and 'src="y/z/b.png"' in html
    # --no-recursive: the top level only
    flat = tmp_path / "flat"
    assert generate.cli(["--input_dir", str(tree), "--output_dir", str(flat), *GEN,
                         "--no-recursive"]) == 0
    assert sorted(p.name for p in flat.glob("*.png") if p.stem != "contact_sheet") == ["a.png"]
    assert not list(flat.glob("*/*.png"))


def test_generate_never_reads_its_own_outputs_inside_the_input_folder(tree, capsys):
    out = tree / "edited"
    args = ["--input_dir", str(tree), "--output_dir", str(out), *GEN, "--lora_scale", "0"]
    assert generate.cli(args) == 0
    # a second run over the same tree: the 4 inputs again, not their 4 outputs as well
    assert generate.cli(args) == 0
    assert "4 image(s)" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")
                  if p.stem != "contact_sheet") == ["a.png", "x/a.png", "y/a.png", "y/z/b.png"]


def test_generate_prompt_file_per_image_in_sub_folders(tree, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"b.png": "make it red"}))
    out = tmp_path / "out"
    assert generate.cli(["--input_dir", str(tree), "--output_dir", str(out), "--pretrained_model",
                         "tiny", "--num_steps", "1", "--prompt", "keep", "--prompt_file",
                         str(prompts), "--contact_sheet", "none"]) == 0
    assert (out / "y" / "z" / "b.png").is_file()


def _tree(root, values):
    for rel, v in values.items():
        _png(root / rel, v)
    return root


def test_evaluate_pairs_files_by_their_path_under_each_folder(tmp_path, capsys):
    """Two a.* in different sub-folders pair with their own outputs, not with each other;
    out/base inside out is not part of the LoRA folder."""
    orig = _tree(tmp_path / "orig", {"x/a.jpg": 0.5, "y/a.jpg": 0.5, "c.jpg": 0.5})
    # LoRA in the brightness band where base is not: x/a and c; the other way round: y/a
    lora = _tree(tmp_path / "out", {"x/a.png": 0.45, "y/a.png": 0.95, "c.png": 0.45})
    base = _tree(tmp_path / "out" / "base", {"x/a.png": 0.95, "y/a.png": 0.45, "c.png": 0.95})
    eval_dir = tmp_path / "eval"
    assert evaluate.cli(["--originals_dir", str(orig), "--base_dir", str(base), "--lora_dir",
                         str(lora), "--output_dir", str(eval_dir), "--rewards", "brightness",
                         "--no_hacking_check", "--no_plots"]) == 0
    err = capsys.readouterr().err
    assert "--lora_dir: 3 image(s)" in err and "x (1)" in err
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["n_scored"] == 3 and summary["unpaired"] == {}
    w = summary["win_rates"]["lora_vs_base"]["brightness"]
    assert (w["wins"], w["losses"], w["n"]) == (2, 1, 3)
    with open(eval_dir / "scores.csv") as fh:
        names = {r["name"] for r in csv.DictReader(fh)}
    assert names == {"x/a", "y/a", "c"}
    # --no_recursive: the top level only (c), nothing of out/base mixes in either way
    assert evaluate.cli(["--originals_dir", str(orig), "--base_dir", str(base), "--lora_dir",
                         str(lora), "--output_dir", str(tmp_path / "eval2"), "--rewards",
                         "brightness", "--no_hacking_check", "--no_plots",
                         "--no_recursive"]) == 0
    assert json.loads((tmp_path / "eval2" / "summary.json").read_text())["n_scored"] == 1
