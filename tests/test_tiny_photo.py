"""The shipped ``tiny-photo`` weights: verified at load, keep photos, follow instructions."""
import json
import shlex
import shutil

import pytest
import torch

from alignprop.models import load_kontext_pipeline
from alignprop.pretrain_tiny import (THRESHOLDS, build_parser, checks, evaluate, held_out_photos,
                                     recorded_command)
from alignprop.tiny_photo import ASSET_DIR, COMPONENTS, load_tiny_photo_pipeline, verify_assets
from common.hub import ModelUnavailableError


@pytest.fixture(scope="module")
def pipe():
    return load_kontext_pipeline("tiny-photo")


@pytest.fixture(scope="module")
def report(pipe):
    return evaluate(pipe, held_out_photos())


def test_manifest_lists_every_file_with_its_sha256_and_the_command():
    manifest = verify_assets()
    assert set(manifest["files"]) == {f"{c}.safetensors" for c in COMPONENTS}
    assert manifest["command"].startswith("python -m alignprop.pretrain_tiny")
    assert manifest["total_bytes"] <= 20 * 1024 * 1024
    # the held-out photos were never trained on
    assert not set(manifest["held_out"]) & set(manifest["train_photos"])


def test_the_recorded_command_is_the_default_recipe_and_runs():
    # `make tiny-photo` (the defaults) re-runs the shipped model's recipe, and the recorded
    # command is one argparse accepts (a switch once came out as `--force True`).
    argv = shlex.split(verify_assets()["command"])
    assert argv[:3] == ["python", "-m", "alignprop.pretrain_tiny"]
    shipped = vars(build_parser().parse_args(argv[3:]))
    defaults = vars(build_parser().parse_args(["--output_dir", shipped["output_dir"]]))
    assert shipped == defaults
    forced = dict(shipped, force=True)
    assert vars(build_parser().parse_args(shlex.split(recorded_command(forced))[3:])) == forced


def test_docs_per_photo_table_is_what_the_shipped_weights_give(report):
    # docs/tiny_photo.md's "shipped" column (benchmarks/tiny_photo_per_photo.py), first set.
    doc = (ASSET_DIR.parents[2] / "docs" / "tiny_photo.md").read_text()
    rows = {cells[1]: cells[3] for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in doc.splitlines()
        if line.startswith("| first | "))}
    per_photo = report["edits"]["black_and_white"]["fraction_per_photo"]
    for photo, fraction in zip(("astronaut", "chelsea", "coffee", "rocket"), per_photo):
        assert rows[photo].strip("*").startswith(f"{100 * fraction:.0f} %"), (photo, rows[photo])


def test_identity_keeps_held_out_photos(report):
    assert report["identity_psnr_db"] >= THRESHOLDS["identity_psnr_min_db"]
    assert report["vae_psnr_db"] - report["identity_psnr_db"] <= THRESHOLDS[
        "identity_vs_vae_max_gap_db"]


@pytest.mark.parametrize("edit", ["brighter", "darker", "black_and_white", "warmer"])
def test_each_instruction_moves_its_statistic(report, edit):
    e = report["edits"][edit]
    assert e["fraction"] >= THRESHOLDS["edit_move_min_fraction"], e


def test_checks_match_the_manifest(report):
    # The figures the pretraining run recorded are what the shipped weights give here.
    recorded = json.loads((ASSET_DIR / "manifest.json").read_text())["report"]
    assert checks(report) == recorded["checks"]
    assert abs(report["identity_psnr_db"] - recorded["identity_psnr_db"]) < 0.05


def test_tiny_stays_random_and_differs(pipe):
    tiny = load_kontext_pipeline("tiny")
    assert tiny.transformer.config.num_single_layers != pipe.transformer.config.num_single_layers \
        or not torch.equal(tiny.vae.decoder.conv_out.weight, pipe.vae.decoder.conv_out.weight)


def test_corrupt_weights_are_refused_with_one_line(tmp_path):
    copy = tmp_path / "tiny-photo"
    shutil.copytree(ASSET_DIR, copy)
    path = copy / "vae.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailableError) as err:
        load_tiny_photo_pipeline(asset_dir=copy)
    msg = str(err.value)
    assert "sha256" in msg and "vae.safetensors" in msg and "\n" not in msg
    (copy / "vae.safetensors").unlink()
    with pytest.raises(ModelUnavailableError, match="missing"):
        load_tiny_photo_pipeline(asset_dir=copy)


def test_per_photo_benchmark_refuses_a_folder_without_a_model(tmp_path, capsys):
    from benchmarks import tiny_photo_per_photo as bench

    with pytest.raises(SystemExit) as exc:
        bench.main(["--weights", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error:" in line]) == 1
    assert "argument --weights" in err[-1] and str(tmp_path) in err[-1]
