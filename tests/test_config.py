"""Flags: the original command parses, presets + overrides, bad values refused clearly."""
import json

import pytest
import torch

from alignprop.config import TrainConfig, load_preset, parse_config
from alignprop.reward_flags import (INTERNVL_CALIBRATIONS, INTERNVL_OBJECTIVES, RewardBuildError,
                                    RewardFlags, build_reward_from_flags, reward_specs)


@pytest.fixture
def data_dir(tmp_path):
    from common.images import save_image

    d = tmp_path / "imgs"
    save_image(torch.rand(3, 32, 32), d / "a.png")
    return d


@pytest.fixture
def ref(tmp_path):
    from common.images import save_image

    p = tmp_path / "ref.png"
    save_image(torch.rand(3, 32, 32), p)
    return p


def original_command(data_dir, ref):
    return (f"--data_dir {data_dir} --mixed_precision bf16 --lora_rank 32 --log_with wandb "
            "--log_image_freq 16 --save_freq 100 --num_epochs 1000000 --image_height 512 "
            "--image_width 512 --sample_num_steps 5 --image_reward_scale 1.5 "
            "--sharpness_reward_scale 2 --sharpness_backend internvl --aesthetic_reward_scale 6 "
            "--similarity_backend internvl-content --aesthetic_model_type internvl "
            f"--train_learning_rate 1e-4 --style_reference {ref} --grid_ratio_weight 1 "
            "--grid_ratio_period 16 --grid_ratio_max_harm 3 --grid_ratio_sigma_bins 0.8 "
            "--grid_eval_resize 512 --brightness_target 0.45 --brightness_band 0.08 "
            "--brightness_anchor_weight 10 --train_gradient_accumulation_steps 4").split()


def test_original_command_parses_to_the_original_objective(data_dir, ref):
    """The original README's command, unchanged: the original's terms, weights and calibration."""
    train, flags = parse_config(original_command(data_dir, ref)
                                + ["--pretrained_model", "tiny", "--internvl_model_id", "tiny"])
    assert (train.mixed_precision, train.lora_rank, train.log_with) == ("bf16", 32, "wandb")
    assert (train.sample_num_steps, train.train_gradient_accumulation_steps) == (5, 4)
    assert train.num_epochs == 1_000_000 and train.train_learning_rate == 1e-4
    specs = {s["term"]: s for s in reward_specs(flags)}
    # the style reference REPLACES the single-image aesthetic, at --aesthetic_reward_scale
    assert set(specs) == {"grid", "brightness", "crispness", "style", "similarity", "sharpness"}
    assert specs["style"]["weight"] == 6 and specs["style"]["task"] == "similarity"
    assert specs["style"]["reference"] == str(ref)
    assert specs["similarity"]["weight"] == 1.5
    assert specs["similarity"]["task"] == "content-similarity"
    assert specs["sharpness"]["weight"] == 2 and specs["sharpness"]["task"] == "sharpness"
    assert specs["crispness"]["weight"] == 0.2  # the original's crispness_anchor_weight default
    assert specs["brightness"] == {"name": "brightness", "term": "brightness", "weight": 10.0,
                                   "target": 0.45, "band": 0.08}
    assert specs["grid"]["period"] == 16 and specs["grid"]["sigma_bins"] == 0.8
    vlm = [s for s in specs.values() if s["name"] == "internvl"]
    assert len(vlm) == 3 and all(s["model_id"] == "tiny" for s in vlm)
    assert all((s["calibration"], s["objective"], s["temperature"]) == ("pmi_null", "expected", 1.0)
               for s in vlm)


def test_style_reward_scale_keeps_both_terms(data_dir, ref):
    _, flags = parse_config(["--data_dir", str(data_dir), "--aesthetic_model_type", "internvl",
                             "--aesthetic_reward_scale", "6", "--style_reference", str(ref),
                             "--style_reward_scale", "2"])
    specs = {s["term"]: s for s in reward_specs(flags)}
    assert (specs["aesthetic"]["weight"], specs["aesthetic"]["task"]) == (6, "single")
    assert (specs["style"]["weight"], specs["style"]["task"]) == (2, "similarity")


def test_crispness_default_guards_training_only_beside_another_term(data_dir):
    _, flags = parse_config(["--data_dir", str(data_dir), "--grid_ratio_weight", "1"])
    assert flags.crispness_weight == 0.2
    _, flags = parse_config(["--data_dir", str(data_dir), "--grid_ratio_weight", "1",
                             "--crispness_weight", "0"])
    assert "crispness" not in {s["term"] for s in reward_specs(flags)}
    # evaluation and Python users: unset means off
    assert "crispness" not in {s["term"] for s in reward_specs(RewardFlags(grid_ratio_weight=1))}


def test_preset_with_command_line_override(tmp_path, data_dir):
    yaml_preset = tmp_path / "p.yaml"
    yaml_preset.write_text(f"data_dir: {data_dir}\nlora_rank: 8\nsample_num_steps: 6\n"
                           "brightness_anchor_weight: 3\n")
    train, flags = parse_config(["--config", str(yaml_preset), "--lora_rank", "4"])
    assert (train.lora_rank, train.sample_num_steps, flags.brightness_anchor_weight) == (4, 6, 3)
    json_preset = tmp_path / "p.json"
    json_preset.write_text(json.dumps({"data_dir": str(data_dir), "grid_ratio_weight": 2}))
    train, flags = parse_config(["--config", str(json_preset), "--max_steps", "7"])
    assert flags.grid_ratio_weight == 2 and train.max_train_steps == 7


def test_preset_with_unknown_key_is_refused(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("lora_rnk: 8\n")
    with pytest.raises(ValueError, match="unknown flag.*lora_rnk"):
        load_preset(p)


@pytest.mark.parametrize("extra, message", [
    (["--backprop_steps", "9", "--sample_num_steps", "4"], "backprop_steps"),
    (["--truncated_backprop", "random", "--backprop_steps_min", "3", "--backprop_steps_max", "2"],
     "backprop_steps_min"),
    (["--image_height", "500"], "multiple of 16"),
    (["--train_learning_rate", "0"], "train_learning_rate"),
    (["--lora_target_modules", " , "], "lora_target_modules"),
    (["--resume_from", "/nonexistent/ckpt"], "resume_from"),
    (["--brightness_target", "1.5"], "brightness_target"),
    (["--style_reference", "/nonexistent/ref.png"], "style_reference.*not found"),
    (["--lpips_resolution", "31"], "lpips_resolution must be >= 32"),
])
def test_bad_values_are_refused(data_dir, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_config(["--data_dir", str(data_dir), "--brightness_anchor_weight", "1"] + extra)


def test_missing_data_dir_and_no_reward_are_refused(data_dir):
    with pytest.raises(ValueError, match="--data_dir is required"):
        parse_config(["--brightness_anchor_weight", "1"])
    with pytest.raises(ValueError, match="no reward is enabled"):
        parse_config(["--data_dir", str(data_dir)])


def test_unknown_backend_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="lpips, face, internvl-content"):
        RewardFlags(similarity_backend="clip")
    with pytest.raises(ValueError, match="none, internvl, aesthetic_scorer, v2.5"):
        RewardFlags(aesthetic_model_type="laion")


def test_cli_reports_bad_flags_without_traceback(data_dir, capsys):
    from alignprop_fluxkontext import main

    with pytest.raises(SystemExit) as exc:  # argparse choices: exit status 2
        main(["--data_dir", str(data_dir), "--sharpness_backend", "clip"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["--data_dir", str(data_dir), "--brightness_anchor_weight", "1",
                 "--style_reference", "/nope.png"]) == 2
    assert "style_reference: file not found" in capsys.readouterr().err


def test_missing_reward_module_is_a_clear_error(monkeypatch):
    import dataclasses

    import rewards

    monkeypatch.setitem(rewards.REGISTRY, "grid", dataclasses.replace(
        rewards.REGISTRY["grid"], module="rewards.not_written_yet"))
    with pytest.raises(RewardBuildError, match="'grid' is not available"):
        build_reward_from_flags(RewardFlags(grid_ratio_weight=1.0))


def test_internvl_choices_mirror_the_vlm_module():
    vlm = pytest.importorskip("rewards.vlm")
    assert tuple(vlm.OBJECTIVES) == INTERNVL_OBJECTIVES
    assert tuple(vlm.CALIBRATIONS) == INTERNVL_CALIBRATIONS


def test_every_flag_has_help_text():
    from dataclasses import fields

    for dc in (TrainConfig, RewardFlags):
        for f in fields(dc):
            assert len(f.metadata.get("help", "")) > 10, f.name


def test_k_range():
    base = dict(data_dir="x", sample_num_steps=6)
    assert TrainConfig(**base, backprop_steps=-1).k_range() == (6, 6)
    assert TrainConfig(**base, backprop_steps=2).k_range() == (2, 2)
    assert TrainConfig(**base, truncated_backprop="random", backprop_steps_min=2).k_range() == (2, 6)


def test_lpips_resolution_32_is_the_smallest_that_lpips_accepts():
    """The flag's bound matches the reward's: 32 builds, 31 is refused by both."""
    from rewards.perceptual import make_lpips_reward

    assert RewardFlags(lpips_resolution=32).lpips_resolution == 32
    with pytest.raises(ValueError, match="lpips_resolution must be >= 32"):
        RewardFlags(similarity_backend="lpips", lpips_resolution=16)
    with pytest.raises(ValueError, match=">= 32"):
        make_lpips_reward(resolution=31, pretrained=False)


def test_reward_flag_defaults_follow_the_reward_modules():
    """The flags' defaults are the reward modules' own defaults (tuned on the benchmark)."""
    import inspect

    from alignprop import reward_flags
    from rewards import anchors, grid

    grid_defaults = inspect.signature(grid.make_grid_reward).parameters
    flags = reward_flags.RewardFlags()
    assert flags.grid_ratio_sigma_bins == grid_defaults["sigma_bins"].default
    assert flags.grid_ratio_period == grid_defaults["period"].default
    assert flags.grid_ratio_max_harm == grid_defaults["max_harm"].default
    assert flags.grid_eval_resize == grid_defaults["eval_resize"].default
    assert flags.grid_mode == grid_defaults["mode"].default
    assert flags.crispness_floor == anchors.DEFAULT_CRISPNESS_FLOOR


def test_per_term_answer_scale_overrides_the_shared_one():
    """--<term>_answer_scale reaches that term's factory; the others keep the shared scale."""
    from alignprop.reward_flags import RewardFlags, build_reward_from_flags, reward_specs

    flags = RewardFlags(aesthetic_model_type="internvl", sharpness_backend="internvl",
                        internvl_model_id="tiny", internvl_answer_scale="digits",
                        aesthetic_answer_scale="qalign",
                        aesthetic_prompt="How good is this photo? Answer excellent, good, fair, "
                                         "poor or bad.")
    specs = {s["term"]: s for s in reward_specs(flags, device="cpu")}
    assert specs["aesthetic"]["answer_scale"] == "qalign"
    assert specs["sharpness"]["answer_scale"] == "digits"
    reward = build_reward_from_flags(flags, device="cpu")
    fns = {t.name: t.fn for t in reward.terms}
    assert fns["aesthetic"].answer_scale.words[0] == "excellent"
    assert list(fns["sharpness"].answer_scale.words) == [str(i) for i in range(10)]
    scores, _ = reward(torch.rand(1, 3, 64, 64), None, ["p"])
    assert torch.isfinite(scores).all()


def test_grid_ratio_statistic_coherent_builds_the_coherent_preset(data_dir, capsys):
    """--grid_ratio_statistic coherent gives the penalty of make_grid_reward(**COHERENT) (not
    the ring statistic's); a bad value, or a flag the preset would override, is one clear error."""
    from alignprop_fluxkontext import main
    from rewards.grid import COHERENT, make_grid_reward

    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    grid = 0.01 * torch.cos(2 * torch.pi * x / 16) * torch.cos(2 * torch.pi * y / 16)
    image = (0.4 + 0.05 * torch.rand(1, 3, 128, 128, generator=g) + grid).clamp(0, 1)
    _, flags = parse_config(["--data_dir", str(data_dir), "--grid_ratio_weight", "1",
                             "--grid_ratio_statistic", "coherent"])
    got = build_reward_from_flags(flags)(image, image, ["p"])[1]["grid/grid_penalty"]
    want = make_grid_reward(**COHERENT)(image)[1]["grid_penalty"]
    ring = make_grid_reward()(image)[1]["grid_penalty"]
    assert float(want) > 0 and float(got) == pytest.approx(float(want), rel=1e-6)
    assert abs(float(ring) - float(want)) > 0.05
    assert reward_specs(RewardFlags(grid_ratio_weight=1))[0].get("statistic", "ring") == "ring"

    with pytest.raises(SystemExit) as exc:  # argparse choices: exit status 2
        main(["--data_dir", str(data_dir), "--grid_ratio_weight", "1",
              "--grid_ratio_statistic", "median"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--grid_ratio_statistic" in err and "choose from 'ring', 'coherent'" in err
    with pytest.raises(ValueError, match="'median' is not valid; choose one of: ring, coherent"):
        RewardFlags(grid_ratio_statistic="median")
    assert main(["--data_dir", str(data_dir), "--grid_ratio_weight", "1",
                 "--grid_ratio_statistic", "coherent", "--grid_mode", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sets --grid_mode global" in err[0] and "error:" in err[0]
