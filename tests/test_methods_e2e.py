"""Each new method trains through `accelerate launch`, raises the reward and resumes exactly
(the default method, alignprop, is covered by test_trainer_e2e.py)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from test_trainer_e2e import COMMON, _launch, _rows

pytestmark = pytest.mark.slow

METHODS = {"draft-lv": ["--method", "draft-lv"],
           "refl": ["--method", "refl"],
           "imagerefl": ["--method", "imagerefl"],
           # AlignProp's truncation: K drawn per micro-batch (2 per step here)
           "alignprop-truncation": ["--truncated_backprop", "alignprop",
                                    "--alignprop_backprop_strategy", "uniform",
                                    "--train_batch_size", "1",
                                    "--train_gradient_accumulation_steps", "2"]}


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory):
    from alignprop.demo import PHOTOS
    from common.photos import write_photos

    d = tmp_path_factory.mktemp("photos2")
    write_photos(d, PHOTOS)
    for p in sorted(d.iterdir())[2:]:
        p.unlink()  # batch 2 of 2 images: every step sees the same images
    return d


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_raises_the_reward_and_resumes_exactly(method, two_photos, tmp_path):
    out = tmp_path / "run"
    common = list(COMMON)
    if method == "alignprop-truncation":   # --backprop_steps is read by 'fixed' only
        i = common.index("--backprop_steps")
        del common[i:i + 2]
    args = ["--data_dir", str(two_photos), "--max_train_steps", "6"] + common + METHODS[method]
    _launch(["--output_dir", str(out), "--save_freq", "4"] + args)
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    rewarded = [r["train/reward"] for r in rows if "train/reward" in r]
    assert len(rewarded) == 6
    assert rewarded[-1] > rewarded[0] + 0.01, rewarded
    config = json.loads((out / "run_config.json").read_text())["config"]
    assert config["method"] == method.replace("-truncation", "")
    if method == "alignprop-truncation":   # the two micro-batches' K, averaged per step
        drawn = [r["train/backprop_steps_drawn"] for r in rows]
        assert all(1 <= d <= 3 for d in drawn) and len(set(drawn)) > 1, drawn

    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-000004",
                    resumed / "checkpoints" / "checkpoint-000004")
    _launch(["--output_dir", str(resumed), "--save_freq", "0", "--resume_from", "latest"] + args)
    again = _rows(resumed)
    assert [r["step"] for r in again] == [5, 6]
    for a, b in zip(rows[4:], again):
        assert a.keys() == b.keys()
        for key in ("train/loss", "train/reward", "train/imagerefl_mse",
                    "train/backprop_steps_drawn", "train/grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    wa = load_file(out / "pytorch_lora_weights.safetensors")
    wb = load_file(resumed / "pytorch_lora_weights.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
