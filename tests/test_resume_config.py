"""A resumed run keeps what a step computes, or says it changed: one line before any model
loads, ``--allow_changed_config`` to go on, and run_config.json records each segment."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import alignprop.models as kontext_models
import alignprop_fluxkontext
from alignprop.checkpoint import CheckpointError
from alignprop.config import (RUN_REWARD_FLAGS, RUN_TRAIN_FLAGS, STEP_TRAIN_FLAGS, TrainConfig,
                              step_flags)
from alignprop.methods import MethodFlags
from alignprop.reward_flags import RewardFlags
from alignprop.trainer import train


def _photos(d, n=2):
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(d / f"p{i}.png")


def _cfg(tmp_path, **kw):
    # relative folders (each test runs in its copy of the run): the same flags in every copy
    base = dict(pretrained_model="tiny", data_dir="imgs", output_dir="out", image_height=16,
                image_width=16,
                sample_num_steps=2, max_train_steps=2, train_batch_size=1, save_freq=2,
                log_image_freq=0, log_with="none", lora_rank=2, mixed_precision="no", seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _brightness(images, inputs, prompts):
    r = images.mean((1, 2, 3))
    return r, {"reward": float(r.detach().mean())}


REWARD = RewardFlags(brightness_anchor_weight=1.0)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Two steps of a tiny run, a checkpoint at step 2."""
    import os

    tmp = tmp_path_factory.mktemp("run")
    _photos(tmp / "imgs")
    here = os.getcwd()
    os.chdir(tmp)
    try:
        train(_cfg(tmp), REWARD, reward_fn=_brightness)
    finally:
        os.chdir(here)
    return tmp


@pytest.fixture
def run_copy(first_run, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(first_run / "imgs", tmp_path / "imgs")
    shutil.copytree(first_run / "out", tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_models(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model loaded before the refusal")

    monkeypatch.setattr(kontext_models, "load_kontext_pipeline", load)


def test_every_training_flag_is_classified():
    """A new flag must say whether it changes what a step computes (alignprop/config.py)."""
    own = {f.name for f in dataclasses.fields(TrainConfig)} - {
        f.name for f in dataclasses.fields(MethodFlags)}
    assert not set(STEP_TRAIN_FLAGS) & set(RUN_TRAIN_FLAGS)
    assert own == set(STEP_TRAIN_FLAGS) | set(RUN_TRAIN_FLAGS)
    assert set(RUN_REWARD_FLAGS) <= {f.name for f in dataclasses.fields(RewardFlags)}
    named = {"method", "draft_lv_n", "sample_num_steps", "backprop_steps", "lora_rank",
             "lora_target_modules", "image_height", "guidance_scale", "aesthetic_prompt",
             "aesthetic_reward_scale", "similarity_backend", "semantics", "train_learning_rate"}
    assert named <= set(step_flags())


# One change of each kind the issue names; (train changes, reward changes, what the line says).
CHANGES = {
    "method": ({"method": "refl"}, {}, "--method alignprop -> refl"),
    "reward weight": ({}, {"brightness_anchor_weight": 2.0}, "--brightness_anchor_weight 1 -> 2"),
    "reward set": ({}, {"grid_ratio_weight": 1.0}, "--grid_ratio_weight 0 -> 1"),
    "question": ({}, {"aesthetic_prompt": "Is it sharp?"},
                 '--aesthetic_prompt None -> "Is it sharp?"'),
    "sampler steps": ({"sample_num_steps": 3}, {}, "--sample_num_steps 2 -> 3"),
    "K": ({"backprop_steps": 2}, {}, "--backprop_steps 1 -> 2"),
    "resolution": ({"image_height": 32}, {}, "--image_height 16 -> 32"),
    "guidance": ({"guidance_scale": 4.0}, {}, "--guidance_scale 2.5 -> 4"),
    "lora targets": ({"lora_target_modules": "attn.to_q"}, {}, "--lora_target_modules"),
    "learning rate": ({"train_learning_rate": 1e-3}, {}, "--train_learning_rate 0.0001 -> 0.001"),
}


@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_a_changed_step_flag_is_refused_before_any_model_loads(kind, run_copy, no_models):
    train_kw, reward_kw, says = CHANGES[kind]
    cfg = _cfg(run_copy, resume_from="latest", max_train_steps=4, **train_kw)
    with pytest.raises(CheckpointError) as err:
        train(cfg, dataclasses.replace(REWARD, **reward_kw), reward_fn=_brightness)
    msg = str(err.value)
    assert "\n" not in msg and "checkpoint-000002" in msg and says in msg, msg
    assert ("--allow_changed_config" in msg) != (kind == "lora targets"), msg


def test_the_command_line_says_it_in_one_line(run_copy, capsys, no_models):
    rc = alignprop_fluxkontext.main([
        "--pretrained_model", "tiny", "--data_dir", "imgs", "--output_dir", "out",
        "--image_height", "16", "--image_width", "16",
        "--sample_num_steps", "2", "--lora_rank", "2", "--brightness_anchor_weight", "1",
        "--method", "draft-lv", "--resume_from", "latest", "--log_with", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--method alignprop -> draft-lv" in err[0], err


def test_run_flags_change_freely_and_the_segment_goes_on_when_nothing_changes(run_copy):
    result = train(_cfg(run_copy, resume_from="latest", max_train_steps=3), REWARD,
                   reward_fn=_brightness)
    assert result.global_step == 3
    segments = json.loads((run_copy / "out" / "run_config.json").read_text())["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 2), (2, 3)]
    assert segments[1]["changed"] == {"max_train_steps": [2, 3]}
    # nothing changed: the open segment goes on (from step 3, where the run stopped)
    train(_cfg(run_copy, resume_from="latest", max_train_steps=3), REWARD, reward_fn=_brightness)
    again = json.loads((run_copy / "out" / "run_config.json").read_text())["segments"]
    assert again == segments


def test_allowed_changes_run_and_every_segment_is_recorded(run_copy):
    changed = dataclasses.replace(REWARD, brightness_anchor_weight=2.0)
    cfg = _cfg(run_copy, resume_from="latest", max_train_steps=4, save_freq=1,
               allow_changed_config=True, train_learning_rate=1e-3)
    result = train(cfg, changed, reward_fn=_brightness)
    assert result.global_step == 4
    info = json.loads((run_copy / "out" / "run_config.json").read_text())
    first, second = info["segments"]
    assert (first["from_step"], first["to_step"], second["from_step"], second["to_step"]) == (
        0, 2, 2, 4)
    assert first["config"]["brightness_anchor_weight"] == 1.0
    assert second["config"]["brightness_anchor_weight"] == 2.0
    assert second["changed"]["brightness_anchor_weight"] == [1.0, 2.0]
    assert second["changed"]["train_learning_rate"] == [1e-4, 1e-3]
    # the checkpoints carry them: resuming from step 3 keeps both, the second still open
    state = json.loads((run_copy / "out" / "checkpoints" / "checkpoint-000003" /
                        "trainer_state.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in state["segments"]] == [(0, 2), (2, None)]
    # ... and what ran after step 2 ran at the new learning rate, not the checkpoint's
    rows = [json.loads(x) for x in (run_copy / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/lr"] for r in rows if r["step"] > 2] == pytest.approx([1e-3, 1e-3])


def test_resuming_from_an_older_checkpoint_drops_the_later_segments(run_copy):
    changed = dataclasses.replace(REWARD, brightness_anchor_weight=2.0)
    train(_cfg(run_copy, resume_from="latest", max_train_steps=4, save_freq=1,
               allow_changed_config=True), changed, reward_fn=_brightness)
    ckpt2 = run_copy / "out" / "checkpoints" / "checkpoint-000002"
    # back at step 2 with the first segment's flags: it goes on, the abandoned one is gone
    train(_cfg(run_copy, resume_from=str(ckpt2), max_train_steps=2), REWARD,
          reward_fn=_brightness)
    segments = json.loads((run_copy / "out" / "run_config.json").read_text())["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 2)]


def test_a_resume_allowed_to_change_the_method_starts_a_fresh_round(run_copy):
    """AlignProp's checkpoint holds no GRPO round: resumed under --method grpo (allowed), the
    run goes on with a round of its own, and the segment says so."""
    cfg = _cfg(run_copy, resume_from="latest", max_train_steps=3, method="grpo",
               grpo_group_size=2, rl_inputs_per_round=2, rl_inner_epochs=1,
               allow_changed_config=True)
    result = train(cfg, REWARD, reward_fn=_brightness)
    assert result.global_step == 3
    segments = json.loads((run_copy / "out" / "run_config.json").read_text())["segments"]
    assert segments[1]["changed"]["method"] == ["alignprop", "grpo"]
    assert (segments[1]["from_step"], segments[1]["to_step"]) == (2, 3)
