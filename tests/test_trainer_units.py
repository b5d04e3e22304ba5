"""Trainer pieces in-process: bad data, non-finite rewards, data order, random K."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alignprop.config import TrainConfig
from alignprop.data import DataError, ImageFolder, SampleStream
from alignprop.reward_flags import RewardFlags
from alignprop.trainer import choose_k, train


def _rgb(path, w=40, h=24, color=(200, 30, 30)):
    Image.new("RGB", (w, h), color).save(path)


def test_missing_and_empty_data_dir_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolder(tmp_path / "nope", 32, 32, "p")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        ImageFolder(tmp_path / "empty", 32, 32, "p")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="none of the 1 image files"):
        ImageFolder(bad, 32, 32, "p")


def test_odd_images_load_and_corrupt_ones_are_skipped_with_a_warning(tmp_path, caplog):
    d = tmp_path / "mixed"
    d.mkdir()
    _rgb(d / "rgb.jpg")
    Image.new("L", (40, 24), 128).save(d / "gray.png")
    Image.new("RGBA", (40, 24), (0, 0, 0, 0)).save(d / "rgba.png")  # transparent -> white
    Image.fromarray(np.full((24, 40), 65535, dtype=np.uint16)).save(d / "deep16.png")
    # EXIF orientation 6 (rotate 90 deg): stored 40x24 red-left / blue-right becomes
    # a portrait image red on top once the orientation is applied.
    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(d / "exif.jpg", exif=exif, quality=95)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with caplog.at_level("WARNING"):
        folder = ImageFolder(d, 32, 32, "p")
    assert "corrupt.jpg" in caplog.text and "skipping 1 unreadable" in caplog.text
    names = {it.path.name: i for i, it in enumerate(folder.items)}
    assert set(names) == {"rgb.jpg", "gray.png", "rgba.png", "deep16.png", "exif.jpg"}
    for i in names.values():
        x = folder.load(i)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
    assert torch.allclose(folder.load(names["gray.png"]), torch.full((3, 32, 32), 128 / 255), atol=2e-2)
    assert folder.load(names["rgba.png"]).min() > 0.95
    assert folder.load(names["deep16.png"]).min() > 0.99
    ex = folder.load(names["exif.jpg"])
    top, bottom = ex[:, :8].mean((1, 2)), ex[:, -8:].mean((1, 2))
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red on top, blue at the bottom


def test_prompt_files(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _rgb(d / "a.png")
    _rgb(d / "b.png")
    (tmp_path / "p.json").write_text('{"a.png": "make it night"}')
    folder = ImageFolder(d, 32, 32, "default", tmp_path / "p.json")
    assert [it.prompt for it in folder.items] == ["make it night", "default"]
    (tmp_path / "p.txt").write_text("# comment\nadd snow\n\nmake it sunny\n")
    folder = ImageFolder(d, 32, 32, "default", tmp_path / "p.txt", seed=1)
    assert folder.all_prompts() == ["add snow", "make it sunny"]
    picks = [folder.prompt_for(0, j) for j in range(20)]
    assert set(picks) == {"add snow", "make it sunny"}
    assert picks == [folder.prompt_for(0, j) for j in range(20)]  # deterministic


def test_sample_stream_is_deterministic_disjoint_and_resumable():
    a = SampleStream(5, seed=1)
    r0 = [a.take(4, 0, 2) for _ in range(3)]
    b = SampleStream(5, seed=1)
    r1 = [b.take(4, 1, 2) for _ in range(3)]
    assert a.position == b.position == 12
    for x, y in zip(r0, r1):
        assert not {j for j, _ in x} & {j for j, _ in y}  # ranks see different samples
    epoch0 = sorted(i for batch in (r0[0], r1[0]) for _, i in batch)
    assert len(set(epoch0)) == 4  # within an epoch no image repeats
    resumed = SampleStream(5, seed=1, position=8)
    assert resumed.take(4, 0, 2) == r0[2]


def test_random_k_is_in_range_deterministic_and_varies():
    cfg = TrainConfig(data_dir="x", sample_num_steps=6, truncated_backprop="random",
                      backprop_steps_min=2, backprop_steps_max=5)
    ks = [choose_k(cfg, s) for s in range(50)]
    assert set(ks) <= {2, 3, 4, 5} and len(set(ks)) > 1
    assert ks == [choose_k(cfg, s) for s in range(50)]


def test_non_finite_reward_skips_the_step_and_leaves_weights(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _rgb(d / "a.png")
    _rgb(d / "b.png", color=(20, 120, 40))

    def nan_reward(images, inputs, prompts):
        r = images.mean((1, 2, 3)) * float("nan")
        return r, {"reward": float("nan")}

    cfg = TrainConfig(pretrained_model="tiny", data_dir=str(d), output_dir=str(tmp_path / "out"),
                      image_height=16, image_width=16, sample_num_steps=2, max_train_steps=2,
                      save_freq=0, log_image_freq=0, log_with="none", lora_rank=2,
                      mixed_precision="no")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, RewardFlags(brightness_anchor_weight=1.0), reward_fn=nan_reward)
    assert result.skipped_steps == 2 and result.global_step == 2
    assert sum("non-finite reward; step skipped" in str(w.message) for w in caught) == 2
    lora = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    b_weights = [v for k, v in lora.items() if "lora_B" in k]
    assert b_weights and all(torch.count_nonzero(v) == 0 for v in b_weights)  # still the init
    assert all(torch.isfinite(v).all() for v in lora.values())


def test_wandb_defaults_to_offline_unless_a_mode_or_key_is_given(tmp_path):
    """No login prompt: offline when HF_HUB_OFFLINE or no API key; a user's mode is kept."""
    from alignprop.logging_utils import configure_wandb

    no_netrc = str(tmp_path / "no_netrc")
    env = {"HF_HUB_OFFLINE": "1", "WANDB_API_KEY": "k" * 40, "NETRC": no_netrc}
    assert configure_wandb(tmp_path / "run", env) == {"dir": str(tmp_path / "run")}
    assert env["WANDB_MODE"] == "offline"
    env = {"NETRC": no_netrc}  # online allowed, but no key anywhere -> offline
    configure_wandb(tmp_path, env)
    assert env["WANDB_MODE"] == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password " + "p" * 40 + "\n")
    env = {"NETRC": str(netrc)}  # `wandb login` wrote a key: leave wandb online
    configure_wandb(tmp_path, env)
    assert "WANDB_MODE" not in env
    env = {"WANDB_API_KEY": "k" * 40}
    configure_wandb(tmp_path, env)
    assert "WANDB_MODE" not in env
    env = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    configure_wandb(tmp_path, env)
    assert env["WANDB_MODE"] == "disabled"


def test_text_encoders_are_freed_before_training(tmp_path, monkeypatch):
    """T5-XXL is 9.5 GB in bf16: once the prompts are encoded nothing may keep it alive (a loop
    variable in train() did, measured on an H200 as 9.5 GB more at every training step)."""
    import gc
    import weakref

    import alignprop.models as models
    import alignprop.trainer as trainer

    d = tmp_path / "imgs"
    d.mkdir()
    _rgb(d / "a.png")
    refs, alive = [], []
    build = models.load_kontext_pipeline

    def load(*a, **kw):
        pipe = build(*a, **kw)
        refs.extend(weakref.ref(m) for m in (pipe.text_encoder, pipe.text_encoder_2))
        return pipe

    def reward(images, inputs, prompts):
        if not alive:  # first call: the training loop has started
            gc.collect()
            alive.extend(r() is not None for r in refs)
        r = images.mean((1, 2, 3))
        return r, {"reward": float(r.detach().mean())}

    monkeypatch.setattr(models, "load_kontext_pipeline", load)
    cfg = TrainConfig(pretrained_model="tiny", data_dir=str(d), output_dir=str(tmp_path / "out"),
                      image_height=16, image_width=16, sample_num_steps=2, max_train_steps=1,
                      save_freq=0, log_image_freq=0, log_with="none", lora_rank=2,
                      mixed_precision="no")
    trainer.train(cfg, RewardFlags(brightness_anchor_weight=1.0), reward_fn=reward)
    assert alive == [False, False]  # CLIP, T5
