"""Failures during training: lost input files are skipped; an unexpected error saves a checkpoint."""
import json

import numpy as np
import pytest
from PIL import Image

import alignprop.data as data
from alignprop.config import TrainConfig
from alignprop.reward_flags import RewardFlags
from alignprop.trainer import train


def _photos(d, n=3):
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(d / f"p{i}.png")
    return d


def _cfg(tmp_path, **kw):
    base = dict(pretrained_model="tiny", data_dir=str(tmp_path / "imgs"),
                output_dir=str(tmp_path / "out"), image_height=16, image_width=16,
                sample_num_steps=2, max_train_steps=4, train_batch_size=1, save_freq=0,
                log_image_freq=0, log_with="none", lora_rank=2, mixed_precision="no", seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _brightness(images, inputs, prompts):
    r = images.mean((1, 2, 3))
    return r, {"reward": float(r.detach().mean())}


def test_an_input_that_disappears_mid_run_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE_BYTES", 0)  # decode every time, as for a huge folder
    imgs = _photos(tmp_path / "imgs")
    calls = []

    def reward(images, inputs, prompts):
        calls.append(1)
        if len(calls) == 1:  # after step 1: one photo is deleted, another truncated
            (imgs / "p0.png").unlink()
            (imgs / "p1.png").write_bytes((imgs / "p2.png").read_bytes()[:40])
        return _brightness(images, inputs, prompts)

    result = train(_cfg(tmp_path, max_train_steps=4), RewardFlags(brightness_anchor_weight=1.0),
                   reward_fn=reward)
    assert result.global_step == 4 and result.lora_path.is_file()
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/skipped_images"] == 0
    assert rows[-1]["train/skipped_images"] == 2
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert sorted(summary["images_unreadable_during_run"]) == [str(imgs / "p0.png"),
                                                             str(imgs / "p1.png")]


def test_resized_inputs_are_decoded_once_and_survive_deletion(tmp_path, monkeypatch):
    imgs = _photos(tmp_path / "imgs")
    decodes = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a, **k: decodes.append(a[0]) or real(*a, **k))
    folder = data.ImageFolder(imgs, 16, 16, "x")
    assert len(decodes) == 3
    for p in imgs.iterdir():
        p.unlink()
    for _ in range(3):
        for i in range(3):
            assert folder.load(i).shape == (3, 16, 16)
    assert len(decodes) == 3  # cached at start-up, never decoded again


def test_unexpected_error_in_the_loop_saves_a_checkpoint_then_raises(tmp_path, caplog):
    _photos(tmp_path / "imgs")
    calls = []

    def flaky(images, inputs, prompts):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return _brightness(images, inputs, prompts)

    with pytest.raises(RuntimeError, match="simulated"):
        train(_cfg(tmp_path), RewardFlags(brightness_anchor_weight=1.0), reward_fn=flaky)
    ckpt = tmp_path / "out" / "checkpoints" / "checkpoint-000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["samples_seen"] == 2  # step 3 is redone
    assert "checkpoint of step 2 saved" in caplog.text
    # and the run continues from it
    result = train(_cfg(tmp_path, resume_from="latest"), RewardFlags(brightness_anchor_weight=1.0),
                   reward_fn=_brightness)
    assert result.global_step == 4
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
