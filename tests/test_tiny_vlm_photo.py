"""``tiny-vlm-photo``: a shipped tiny VLM that answers, through the scorer's own code.

The model is loaded once per module (rewards share the cached bundle). Photos are the four
held out of every pretraining set (astronaut, chelsea, coffee, rocket).
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

import internvl_scorer
import rewards.vlm_named as named
from alignprop import pretrain_tiny_vlm as pretrain
from alignprop import tiny_vlm_data as data
from alignprop.estimate import vlm_config
from alignprop.pretrain_tiny import held_out_photos
from alignprop.reward_flags import RewardFlags, build_reward_from_flags
from alignprop.tiny_vlm_table import answers, markdown
from alignprop.validate import check_reward_paths
from common.cli import UserError
from common.hub import ModelUnavailableError
from common.images import save_image
from rewards.vlm import make_vlm_reward
from rewards.vlm_model import load_vlm
from rewards.vlm_named import ASSET_ROOT, MANIFEST, named_vlm_dir, verify_folder

from _vlm_question_helpers import question_gaps, question_reward, recorded_flags, shift

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-vlm-photo"
SHIPPED = ASSET_ROOT / NAME


def reward(task="single", attr="brightness", **kw):
    return question_reward(NAME, task, attr, **kw)


@pytest.fixture(scope="module")
def photos():
    return held_out_photos(data.SIZE)


# --------------------------------------------------------------------------- meaning
def test_brightness_question_ranks_brighter_above_darker_and_warmth_question_does_not(photos):
    # the same luma offset on every channel: R - B stays (nearly) where it was
    gaps = question_gaps(NAME, photos, "brightness")
    gap_bright, gap_warm = gaps["brightness"], gaps["warmth"]
    assert (gap_bright > 0.15).all(), gap_bright          # > 1.35 digits on every photo
    assert gap_warm.abs().mean() < gap_bright.mean() / 3, (gap_warm, gap_bright)


def test_warmth_question_ranks_warmer_above_cooler_and_brightness_question_does_not(photos):
    gaps = question_gaps(NAME, photos, "warmth")
    gap_warm, gap_bright = gaps["warmth"], gaps["brightness"]
    assert (gap_warm > 0.1).all(), gap_warm
    assert gap_bright.abs().mean() < gap_warm.mean() / 3, (gap_bright, gap_warm)


def test_sharpness_and_colourfulness_questions(photos):
    blurred = data.gaussian_blur(photos, torch.full((4,), 1.5))
    grey = photos.mean(1, keepdim=True).expand_as(photos)
    with torch.no_grad():
        assert (reward(attr="sharpness")(photos)[0] > reward(attr="sharpness")(blurred)[0]).all()
        assert (reward(attr="colourfulness")(photos)[0]
                > reward(attr="colourfulness")(grey)[0]).all()


def test_pair_is_debiased_and_right(photos):
    pair = reward("pair", "brightness")
    brighter, darker = shift(photos, (0.15,) * 3), shift(photos, (-0.15,) * 3)
    with torch.no_grad():
        ab, m = pair(brighter, darker)
        ba, _ = pair(darker, brighter)
    torch.testing.assert_close(ab + ba, torch.ones(4), atol=1e-6, rtol=0)
    assert (ab > 0.5).all() and ab.mean() > 0.6, ab      # the brighter one wins, every photo
    assert "position_bias" in m


def test_calibrations_agree_on_the_ranking_and_pmi_null_is_cached(photos):
    brighter, darker = shift(photos, (0.15,) * 3), shift(photos, (-0.15,) * 3)
    for calibration in ("none", "pmi_null"):
        r = reward(attr="brightness", calibration=calibration)
        with torch.no_grad():
            assert (r(brighter)[0] > r(darker)[0]).all(), calibration
            before = r.num_forwards
            r(photos)
        # pmi_null's gray-image forward is computed once and cached
        assert r.num_forwards - before == 1
    none, pmi = reward(attr="brightness"), reward(attr="brightness", calibration="pmi_null")
    with torch.no_grad():
        assert not torch.allclose(none(photos)[0], pmi(photos)[0])


@pytest.mark.parametrize("attr", ["brightness", "warmth"])
def test_gradient_ascent_on_pixels_moves_the_asked_statistic(photos, attr):
    other = {"brightness": "warmth", "warmth": "brightness"}[attr]
    r = reward(attr=attr)
    x = photos.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(20):
        score, _ = r(x.clamp(0, 1))
        opt.zero_grad()
        (-score.sum()).backward()
        opt.step()
    with torch.no_grad():
        moved = data.statistic(attr, x.clamp(0, 1)) - data.statistic(attr, photos)
        side = data.statistic(other, x.clamp(0, 1)) - data.statistic(other, photos)
    assert (moved > 0.02).all(), moved
    assert side.abs().mean() < moved.mean(), (side, moved)


# --------------------------------------------------------------------------- the shipped files
def test_shipped_files_verify_and_load_as_a_local_checkpoint():
    manifest = verify_folder(SHIPPED, NAME)
    assert named_vlm_dir(NAME) == SHIPPED
    for f in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (SHIPPED / f).is_file() and f in manifest["files"]
    assert manifest["total_bytes"] <= 10_000_000
    assert json.loads((SHIPPED / "config.json").read_text())["model_type"] == "internvl"
    assert manifest["command"].startswith("python -m alignprop.pretrain_tiny_vlm ")
    # the same folder by path and by name: the same weights through the same loader
    by_path = make_vlm_reward("single", model_id=str(SHIPPED), dtype="float32", device="cpu",
                              prompt=data.QUESTIONS["warmth"])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(by_path(x)[0], reward(attr="warmth")(x)[0])


def test_shipped_figures_are_what_the_checks_say():
    # The shipped model does NOT pass every check of the issue yet (its manifest says which;
    # docs/vlm.md says why): what the demo and the scorer rely on -- the single questions'
    # ranking of brightness and warmth, and the exact pair debiasing -- does.
    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    report = manifest["report"]
    assert manifest["thresholds"] == pretrain.THRESHOLDS
    assert pretrain.checks(report) == report["checks"]
    assert manifest["passed"] == all(report["checks"].values())
    for cal in ("none", "pmi_null"):
        rep = report[cal]
        assert rep["spearman"]["brightness"] >= 0.95 and rep["spearman"]["warmth"] >= 0.95
        assert rep["spearman"]["sharpness"] >= 0.8
        assert max(rep["pair_antisymmetry_max"].values()) <= 1e-5
    assert set(manifest["held_out"]).isdisjoint(manifest["train_photos"])
    assert manifest["command"].endswith("--force") == (not manifest["passed"])


def test_a_changed_file_is_one_line_error(tmp_path, monkeypatch):
    copy = tmp_path / NAME
    shutil.copytree(SHIPPED, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setattr(named, "ASSET_ROOT", tmp_path)
    with pytest.raises(ModelUnavailableError) as info:
        make_vlm_reward("single", model_id=NAME, dtype="float32", device="cpu",
                        prompt=data.QUESTIONS["warmth"])
    message = str(info.value)
    assert "sha256" in message and "model.safetensors" in message and "\n" not in message
    shutil.copyfile(SHIPPED / "model.safetensors", copy / "model.safetensors")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailableError, match="tokenizer.json is missing"):
        named_vlm_dir(NAME)


def test_tiny_stays_the_random_model():
    tiny = load_vlm("tiny", dtype="float32", device="cpu")
    photo = load_vlm(NAME, dtype="float32", device="cpu")
    assert sum(p.numel() for p in tiny.model.parameters()) < 100_000
    assert sum(p.numel() for p in photo.model.parameters()) > 500_000
    assert photo.model_id == NAME and photo.family.name == "InternVL3"


# --------------------------------------------------------------------------- everywhere tiny works
def test_training_flag_and_scorer_take_the_name(tmp_path, photos, capsys):
    flags = RewardFlags(aesthetic_model_type="internvl", internvl_model_id=NAME,
                        internvl_dtype="float32", aesthetic_prompt=data.QUESTIONS["brightness"])
    check_reward_paths(flags)           # the validation pass of training takes the name
    config, source = vlm_config(NAME)   # and --estimate reads its shipped config.json
    assert config.model_type == "internvl" and source.endswith("tiny-vlm-photo/config.json")
    composite = build_reward_from_flags(flags, device="cpu")
    dark, bright = shift(photos[:1], (-0.2,) * 3), shift(photos[:1], (0.2,) * 3)
    with torch.no_grad():
        assert composite(bright, bright, ["x"])[0] > composite(dark, dark, ["x"])[0]

    save_image(dark[0], tmp_path / "a_dark.png")
    save_image(bright[0], tmp_path / "b_bright.png")
    capsys.readouterr()
    assert internvl_scorer.main([str(tmp_path / "a_dark.png"), str(tmp_path / "b_bright.png"),
                                 "--model_id", NAME, "--device", "cpu", "--format", "json",
                                 "--prompt", data.QUESTIONS["brightness"]]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["score"] > rows[0]["score"] + 0.2, rows


# --------------------------------------------------------------------------- the pretraining command
def test_pretraining_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "vlm"
    args = ["--output_dir", str(out), "--vision_steps", "2", "--steps", "2", "--batch", "2",
            "--crops", "40", "--eval_samples", "8"]
    assert pretrain.main(args) == 1                 # checks fail on 2 steps: nothing written
    assert not out.exists()
    assert "not written" in capsys.readouterr().out
    assert pretrain.main(args + ["--force"]) == 1   # written anyway, still exit 1
    manifest = verify_folder(out, "test")
    assert not manifest["passed"] and manifest["command"].endswith("--force")
    assert set(manifest["report"]) >= {"none", "pmi_null", "checks"}
    # the defaults are the shipped recipe: every flag but the budget ones above is recorded as
    # the shipped manifest's command has it
    budget = {"--vision_steps", "--steps", "--batch", "--crops", "--eval_samples"}
    shipped = json.loads((SHIPPED / MANIFEST).read_text())["command"]
    assert recorded_flags(manifest["command"], budget) == recorded_flags(shipped, budget)
    again = tmp_path / "again"
    pretrain.main(["--output_dir", str(again)] + args[2:] + ["--force"])
    # same command, same seed: the same weights, byte for byte
    assert (json.loads((again / MANIFEST).read_text())["files"]["model.safetensors"]
            == manifest["files"]["model.safetensors"])
    r = make_vlm_reward("single", model_id=str(out), dtype="float32", device="cpu",
                        prompt=data.QUESTIONS["brightness"])
    assert r.bundle.family.name == "InternVL3"


def test_pretraining_refuses_the_package_assets(tmp_path):
    for folder in (SHIPPED, ASSET_ROOT / "new", ROOT / "alignprop" / "assets" / "x"):
        with pytest.raises(UserError, match="assets"):
            pretrain.main(["--output_dir", str(folder)])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder nor an earlier"):
        pretrain.main(["--output_dir", str(tmp_path / "other")])


# --------------------------------------------------------------------------- README table
def test_readme_table_is_the_committed_run_and_the_model_gives_it():
    committed = json.loads((ROOT / "media" / "tiny_vlm_answers.json").read_text())
    assert markdown(committed["rows"]) in (ROOT / "README.md").read_text()
    fresh = answers()
    for a, b in zip(fresh, committed["rows"]):
        assert (a["photo"], a["edit"]) == (b["photo"], b["edit"])
        for attr in data.ATTRIBUTES:
            assert abs(a["answer"][attr] - b["answer"][attr]) < 0.05
