"""The demo's texture and grid checks judge what the LoRA adds beyond a clean global edit:
a clean brightness / saturation / tone edit passes them, a small 4-px artifact does not
(benchmarks/demo_check_sensitivity.py prints the same table on the base model's outputs)."""
import sys
from pathlib import Path

import pytest
import torch

from alignprop.config import DEFAULT_PROMPT
from alignprop.demo import (SAMPLE_STEPS, SIZE, demo_checks, demo_reward, demo_reward_flags,
                            edit_with_pipeline)
from alignprop.models import TINY_PHOTO, load_kontext_pipeline
from alignprop.photo_sets import load_second_set
from alignprop.reward_flags import build_reward_from_flags
from rewards.grid import detail_beyond_edit, matched_global_edit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import demo_check_sensitivity as sensitivity  # noqa: E402

CHECKS = ("no_texture_added_over_matched_edit", "grid_penalty_not_above_matched_edit")


@pytest.fixture(scope="module")
def judged():
    # the base model's own outputs on the second held-out set, as the demo makes them
    photos = load_second_set(SIZE)
    base = edit_with_pipeline(load_kontext_pipeline(TINY_PHOTO), photos, DEFAULT_PROMPT,
                              SAMPLE_STEPS, seed=1)
    reward = demo_reward(build_reward_from_flags(demo_reward_flags()))
    return {name: (artifact, demo_checks(f))
            for name, artifact, f in sensitivity.rows(reward, photos, base)}


def test_clean_global_edits_pass_the_texture_and_grid_checks(judged):
    clean = {name: checks for name, (artifact, checks) in judged.items() if not artifact}
    assert len(clean) == len(sensitivity.EDITS)
    for name, checks in clean.items():
        assert all(checks[c] for c in CHECKS), (name, {c: checks[c] for c in CHECKS})


def test_small_4px_artifacts_fail_them_with_or_without_an_edit(judged):
    dirty = {name: checks for name, (artifact, checks) in judged.items() if artifact}
    assert len(dirty) == 2 * len(sensitivity.ARTIFACTS)
    for name, checks in dirty.items():
        assert not all(checks[c] for c in CHECKS), name


def test_matched_edit_reproduces_a_pointwise_edit_and_leaves_texture_out():
    photos = load_second_set(SIZE)[:4]
    edited = sensitivity.global_edit(photos, brightness=1.1, saturation=1.45, shadow_lift=0.3)
    matched = matched_global_edit(photos, edited)
    assert (matched - edited).abs().mean() < 0.01
    blocky = sensitivity.blocky_texture(edited, 0.03, dark_only=False)
    # the fit sees only colours: the token offsets are not in it
    assert (matched_global_edit(photos, blocky) - edited).abs().mean() < 0.012
    assert (blocky - edited).abs().mean() > 0.015
    flat = torch.full((1, 3, 16, 16), 0.2)
    assert matched_global_edit(flat, sensitivity.blocky_texture(flat, 0.05, False)).std() < 1e-6
    with pytest.raises(ValueError, match="differ in shape"):
        matched_global_edit(photos, photos[:, :, :8])


def test_detail_beyond_edit_is_zero_for_a_global_edit_and_sees_blocks_grids_and_blur():
    photos = load_second_set(SIZE)[:4]
    edited = sensitivity.global_edit(photos, brightness=1.1, saturation=1.45, shadow_lift=0.3)
    clean = detail_beyond_edit(edited, photos)
    assert clean.max() < 2e-6
    blocky = sensitivity.blocky_texture(edited, 0.01, dark_only=False)
    gridded = sensitivity.grid(edited, 0.01, colour_only=True)
    blurred = torch.nn.functional.avg_pool2d(edited, 3, 1, 1, count_include_pad=False)
    for name, x in (("blocks", blocky), ("grid", gridded), ("blur", blurred)):
        assert (detail_beyond_edit(x, photos) > 5 * clean + 5e-6).all(), name
    x = blocky.clone().requires_grad_(True)
    detail_beyond_edit(x, photos).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("module", ["alignprop.demo", "alignprop.demo_vlm"])
@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], "argument --steps: must be >= 2, got 1"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--threads", "-1"], "argument --threads: must be >= 0, got -1"),
    (["--seed", "-2"], "argument --seed: must be >= 0, got -2"),
])
def test_demo_flags_are_checked_before_anything_is_written(module, argv, message, tmp_path,
                                                           capsys):
    """Both demos refuse a bad number in one usage line, exit 2, before claiming a folder."""
    import importlib

    main = importlib.import_module(module).main
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--output_dir", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: " + message), err
    assert not out.exists()
