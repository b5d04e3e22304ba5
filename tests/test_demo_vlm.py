"""`make demo-vlm`: the checks it prints and the README's figures (from the committed run)."""
import copy
import json
from pathlib import Path

import pytest
import torch

from alignprop import tiny_vlm_data as data
from alignprop.demo_vlm import (GRID_TOLERANCE, MAX_CROSS_RATIO, MIN_OWN_MOVE, QUESTION_A,
                                QUESTION_B, RUNS, SSIM_FLOOR, VLM, cli, demo_checks,
                                demo_reward, readme_line, train_config, vlm_flags)
from alignprop.pretrain_tiny import held_out_photos

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "media" / "demo_vlm_summary.json"


def test_the_two_runs_differ_only_in_the_question():
    a, b = vlm_flags(QUESTION_A), vlm_flags(QUESTION_B)
    differ = {k for k in vars(a) if getattr(a, k) != getattr(b, k)}
    assert differ == {"aesthetic_prompt"}
    assert set(RUNS.values()) == {QUESTION_A, QUESTION_B}
    # the training flags differ only in where each run is written; the content term is on
    ca, cb = (train_config(n, Path("p"), Path("o"), 60, 0) for n in RUNS)
    assert {k for k in vars(ca) if getattr(ca, k) != getattr(cb, k)} == {"output_dir"}
    assert ca.base_consistency_weight > 0


@pytest.mark.parametrize("vlm", [VLM, "tiny-qwen-vl-photo"])
def test_the_demo_reward_asks_the_chosen_vlm_and_its_question_ranks(vlm):
    # --vlm picks the model of both runs; through the demo's own reward (VLM term + grid guard
    # + texture term) the brightness question scores the brighter photos higher, the warmth
    # question barely moves
    assert vlm_flags(QUESTION_B, 1, vlm).internvl_model_id == vlm
    photos = held_out_photos(data.SIZE)
    brighter, darker = (photos + 0.15).clamp(0, 1), (photos - 0.15).clamp(0, 1)
    gain = {}
    for name, question in RUNS.items():
        reward = demo_reward(question, 1, vlm)
        with torch.no_grad():
            gain[name] = float((reward(brighter, brighter, None)[0]
                                - reward(darker, darker, None)[0]).mean())
    assert gain["brightness"] > 2.0 and abs(gain["warmth"]) < gain["brightness"] / 3, gain


def test_an_unknown_vlm_is_refused_by_argparse_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        cli(["--vlm", "tiny-vlm-phot", "--output_dir", str(out)])
    assert exc.value.code == 2
    assert ("argument --vlm: invalid choice: 'tiny-vlm-phot'"
            in capsys.readouterr().err.strip().splitlines()[-1])
    assert not out.exists()


def test_checks_fail_when_a_question_does_not_steer():
    summary = json.loads(SUMMARY.read_text())
    assert all(demo_checks(summary).values())
    # the warmth run moving brightness as much as the brightness run did is a FAIL
    bad = copy.deepcopy(summary)
    bad["moves"]["warmth"]["brightness"] = bad["moves"]["brightness"]["brightness"]
    assert not demo_checks(bad)["warmth_question_moves_brightness_much_less"]
    bad = copy.deepcopy(summary)
    bad["moves"]["brightness"]["brightness"] = MIN_OWN_MOVE["brightness"] / 2
    assert not demo_checks(bad)["brightness_question_moves_brightness_by_0.05"]
    bad = copy.deepcopy(summary)
    bad["ssim_vs_base"]["warmth"] = SSIM_FLOOR - 0.01
    assert not demo_checks(bad)["warmth_question_keeps_content_ssim"]
    # a grid above the base output given the run's own global edit is a FAIL, whatever the
    # base output's own penalty
    bad = copy.deepcopy(summary)
    bad["grid_penalty"]["brightness"] = \
        bad["grid_penalty_matched_edit"]["brightness"] + 2 * GRID_TOLERANCE
    bad["grid_penalty"]["base"] = bad["grid_penalty"]["brightness"] + 1.0
    assert not demo_checks(bad)["brightness_question_adds_no_grid_beyond_its_edit"]


def test_readme_demo_vlm_figures_are_what_the_demo_printed():
    # media/demo_vlm_summary.json is written by `python -m alignprop.demo_vlm --media_dir media`
    # (the run that made media/demo_vlm_grid.png); the README must quote it exactly.
    summary = json.loads(SUMMARY.read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme_line(summary) in readme, readme_line(summary)
    assert demo_checks(summary) == summary["checks"] and all(summary["checks"].values())
    assert summary["thresholds"]["ssim_floor"] == SSIM_FLOOR
    assert summary["thresholds"]["max_cross_ratio"] == MAX_CROSS_RATIO
    assert summary["questions"] == RUNS
    assert (ROOT / "media" / "demo_vlm_grid.png").is_file()


def test_coherent_grid_figure_is_reported_not_checked():
    """demo-vlm reports the coherent statistic beside its grid check; the checks do not read it."""
    import pytest
    import torch

    from alignprop.demo import coherent_grid_flags
    from alignprop.demo_vlm import build_guard

    summary = json.loads(SUMMARY.read_text())
    bad = copy.deepcopy(summary)
    bad["grid_coherent"] = {k: 9.0 for k in ("base", *RUNS)}
    bad["grid_coherent_matched_edit"] = {k: 0.0 for k in RUNS}
    assert demo_checks(bad) == demo_checks(summary)
    torch.manual_seed(0)
    x = 0.3 + 0.2 * torch.rand(2, 3, 32, 32)
    x[:, :, ::4, ::4] += 0.05
    ring, coherent = build_guard(), build_guard(coherent_grid_flags())
    assert coherent(x) > 0.1 and coherent(x) != pytest.approx(ring(x), rel=0.05)
