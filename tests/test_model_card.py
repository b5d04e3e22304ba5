"""Every run writes a model card beside its LoRA; --push_to_hub uploads when it can, and says
in one line why not when it cannot (issue 22 item 7)."""
import logging
import warnings

import torch
import yaml

from alignprop.config import TrainConfig
from alignprop.model_card import TAGS, push
from alignprop.reward_flags import RewardFlags
from alignprop.trainer import train
from common.images import save_image


def _run(tmp_path, **kw):
    for i in range(2):
        save_image(torch.rand(3, 16, 16), tmp_path / "data" / f"{i}.png")
    cfg = TrainConfig(pretrained_model="tiny", data_dir=str(tmp_path / "data"),
                      output_dir=str(tmp_path / "run"), image_height=16, image_width=16,
                      sample_num_steps=2, max_train_steps=1, save_freq=0, log_image_freq=1,
                      log_with="none", lora_rank=2, mixed_precision="no", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(cfg, RewardFlags(brightness_anchor_weight=2.0, grid_ratio_weight=0.5))


def test_every_run_writes_a_diffusers_model_card(tmp_path):
    _run(tmp_path, prompt="Make it warmer.")
    text = (tmp_path / "run" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["instance_prompt"] == "Make it warmer."
    assert set(TAGS) <= set(meta["tags"]) and "base_model" not in meta   # "tiny" is no hub id
    assert meta["widget"][0]["output"]["url"] == "sample_grid.png"
    assert (tmp_path / "run" / "sample_grid.png").is_file()
    assert "| brightness | 2 |" in text and "| grid | 0.5 |" in text
    assert "load_lora_weights" in text


def test_push_to_hub_offline_says_why_and_succeeds(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="alignprop"):
        result = _run(tmp_path, push_to_hub=True, hub_model_id="me/my-lora")
    assert result.lora_path is not None and result.lora_path.is_file()
    lines = [r.getMessage() for r in caplog.records if "--push_to_hub" in r.getMessage()]
    assert len(lines) == 1 and "nothing uploaded: offline" in lines[0]


def test_push_uploads_the_run_folder_when_logged_in(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    calls = {}

    class FakeApi:
        def whoami(self):
            return {"name": "me"}

        def create_repo(self, repo_id, **kw):
            calls["create"] = repo_id

        def upload_folder(self, folder_path, repo_id, **kw):
            calls["upload"] = (folder_path, repo_id, kw["ignore_patterns"])
            return type("Info", (), {"repo_url": f"https://huggingface.co/{repo_id}"})()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (tmp_path / "run-7").mkdir()
    url, line = push(tmp_path / "run-7", None)
    assert url == "https://huggingface.co/me/run-7" and "uploaded" in line
    assert calls["create"] == "me/run-7" and calls["upload"][1] == "me/run-7"
    assert "checkpoints/*" in calls["upload"][2]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    url, line = push(tmp_path / "run-7", "me/x")
    assert url is None and "not logged in" in line
