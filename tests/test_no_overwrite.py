"""No command writes over its inputs; a new run never lands in another run's folder.

Every refusal here happens before a model loads, so these tests take milliseconds.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _photos(d: Path, n=2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(d / f"p{i}.png")
    return d


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ---------------------------------------------------------------- generate
@pytest.mark.parametrize("case", ["same", "symlink", "base_dir", "inputs_in_out_base"])
def test_generate_refuses_to_write_over_its_inputs(tmp_path, capsys, case):
    from alignprop.generate import cli

    photos = _photos(tmp_path / "photos")
    argv = ["--input_dir", str(photos), "--pretrained_model", "tiny", "--num_steps", "1",
            "--prompt", "x", "--contact_sheet", "none"]
    if case == "same":
        argv += ["--output_dir", str(photos)]
    elif case == "symlink":
        (tmp_path / "link").symlink_to(photos)
        argv += ["--output_dir", str(tmp_path / "link")]
    elif case == "base_dir":
        argv += ["--output_dir", str(tmp_path / "out"), "--lora", str(tmp_path / "lora.safetensors"),
                 "--base_dir", str(photos)]
        (tmp_path / "lora.safetensors").write_bytes(b"")  # never read: refused before
    else:  # the inputs live in OUT/base, which is where the base outputs would go
        base = _photos(tmp_path / "out" / "base")
        photos = base
        argv = ["--input_dir", str(base), "--output_dir", str(tmp_path / "out"),
                "--pretrained_model", "tiny", "--prompt", "x", "--output_format", "png",
                "--lora", str(tmp_path / "lora.safetensors")]
        (tmp_path / "lora.safetensors").write_bytes(b"")
    before = _digest(photos)
    assert cli(argv) == 2
    flag = "--output_dir" if case in ("same", "symlink") else "--base_dir"
    _one_line_error(capsys, f"{flag} ", "is the same folder as --input_dir")
    assert _digest(photos) == before


# ---------------------------------------------------------------- evaluate
def test_evaluate_refuses_an_output_dir_that_is_an_image_folder(tmp_path, capsys):
    from alignprop.evaluate import cli

    lora = _photos(tmp_path / "lora")
    base = _photos(tmp_path / "base")
    before = _digest(lora)
    assert cli(["--lora_dir", str(lora), "--base_dir", str(base), "--output_dir", str(lora),
                "--rewards", "brightness"]) == 2
    _one_line_error(capsys, "--output_dir", "--lora_dir")
    assert _digest(lora) == before


# ---------------------------------------------------------------- benchmark
def test_benchmark_synthesis_and_reports_never_replace_inputs(tmp_path, capsys):
    import benchmark_anti_periodic as bench

    clean = _photos(tmp_path / "clean")
    before = _digest(clean)
    assert bench.main(["--synthesize_from", str(clean), "--synth_out", str(clean),
                       "--no_progress"]) == 2
    _one_line_error(capsys, "--synth_out", "--synthesize_from")
    art = _photos(tmp_path / "art")
    assert bench.main(["--artifacts_dir", str(art), "--clean_dir", str(clean),
                       "--plot", str(clean / "p0.png"), "--no_progress"]) == 2
    _one_line_error(capsys, "--plot", "p0.png")
    assert _digest(clean) == before


# ---------------------------------------------------------------- training
TRAIN = ["--pretrained_model", "tiny", "--brightness_anchor_weight", "1", "--max_train_steps", "1"]


def test_new_run_in_a_used_output_dir_is_refused_before_models_load(tmp_path, capsys):
    import alignprop_fluxkontext as cli

    photos = _photos(tmp_path / "photos")
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-000004").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-000004" / "trainer_state.json").write_text(
        json.dumps({"global_step": 4, "samples_seen": 8}))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = (out / "metrics.jsonl").read_text()
    assert cli.main(["--data_dir", str(photos), "--output_dir", str(out)] + TRAIN) == 2
    _one_line_error(capsys, "already holds a run", "--resume_from latest", "checkpoint-000004")
    assert (out / "metrics.jsonl").read_text() == before


def test_training_output_dir_under_a_file_or_unwritable_is_refused_early(tmp_path, capsys):
    import alignprop_fluxkontext as cli

    photos = _photos(tmp_path / "photos")
    (tmp_path / "afile").write_text("x")
    assert cli.main(["--data_dir", str(photos), "--output_dir", str(tmp_path / "afile" / "run")]
                    + TRAIN) == 2
    _one_line_error(capsys, "--output_dir", "is a file, not a folder")
    ro = Path("/sys/alignprop-test-run")  # a folder nobody (not even root) can create
    if os.access("/sys", os.W_OK) and not ro.parent.is_dir():
        pytest.skip("no unwritable folder on this machine")
    assert cli.main(["--data_dir", str(photos), "--output_dir", str(ro)] + TRAIN) == 2
    _one_line_error(capsys, "--output_dir", "cannot write there")
    assert cli.main(["--data_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")]
                    + TRAIN) == 2
    _one_line_error(capsys, "--data_dir")


def test_truncate_metrics_drops_rows_past_the_checkpoint(tmp_path):
    from alignprop.logging_utils import truncate_metrics

    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s, "r": s}) + "\n" for s in range(1, 9))
                 + '{"step": 9, "r"')  # torn last line
    assert truncate_metrics(m, 6) == 3
    assert [json.loads(x)["step"] for x in m.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert truncate_metrics(m, 6) == 0


def test_later_checkpoints_are_set_aside_not_deleted(tmp_path):
    from alignprop.checkpoint import list_checkpoints, set_aside_later_checkpoints

    for s in (2, 4, 6):
        d = tmp_path / "checkpoints" / f"checkpoint-{s:06d}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text("{}")
    moved = set_aside_later_checkpoints(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000002"]
    assert sorted(p.name for p in moved) == ["checkpoint-000004", "checkpoint-000006"]
    assert all((tmp_path / "checkpoints" / "superseded-000002" / p.name).is_dir() for p in moved)


# ---------------------------------------------------------------- demo
def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    from alignprop.demo import claim_demo_dir
    from common.cli import UserError

    mine = _photos(tmp_path / "my_photos")
    before = _digest(mine)
    with pytest.raises(UserError, match="did not write"):
        claim_demo_dir(mine)
    assert _digest(mine) == before
    demo = tmp_path / "demo"
    claim_demo_dir(demo)  # new folder: fine, and marked as the demo's
    (demo / "metrics.jsonl").write_text('{"step": 1}\n')
    (demo / "checkpoints" / "checkpoint-000001").mkdir(parents=True)
    claim_demo_dir(demo)  # an earlier demo: its run is cleared for the new one
    assert not (demo / "metrics.jsonl").exists() and not (demo / "checkpoints").exists()
