"""generate and evaluate on tiny-photo: real photos, real edits, known answers (CPU, seconds).

The random `tiny` model turns photos into noise, so a contact sheet or a win-rate on it
shows plumbing only; tiny-photo keeps a photo for its identity instruction and follows
"Make it brighter.", so here the images mean something.
"""
import json

import numpy as np
import pytest
from PIL import Image

from alignprop.evaluate import cli as evaluate_cli
from alignprop.generate import cli as generate_cli
from alignprop.tiny_photo import EDIT_PROMPTS, IDENTITY_PROMPT

PHOTOS = ("astronaut", "chelsea", "coffee")  # held out from tiny-photo's pretraining


def _arr(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def _luma(a):
    return float((a * [0.299, 0.587, 0.114]).sum(-1).mean())


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    import skimage.data
    import torch

    from common.images import resize_to

    root = tmp_path_factory.mktemp("photo_edits")
    inputs = root / "inputs"
    inputs.mkdir()
    for name in PHOTOS:
        x = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255
        y = (resize_to(x, 64, 64).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(y).save(inputs / f"{name}.png")
    for folder, prompt in (("keep", IDENTITY_PROMPT), ("brighter", EDIT_PROMPTS["brighter"])):
        rc = generate_cli(["--input_dir", str(inputs), "--output_dir", str(root / folder),
                           "--pretrained_model", "tiny-photo", "--prompt", prompt,
                           "--num_steps", "8", "--batch_size", "3", "--seed", "0"])
        assert rc == 0
    return root


def test_generate_keeps_photos_and_follows_the_instruction(edited):
    for name in PHOTOS:
        src = _arr(edited / "inputs" / f"{name}.png")
        keep = _arr(edited / "keep" / f"{name}.png")
        bright = _arr(edited / "brighter" / f"{name}.png")
        assert keep.shape == src.shape == (64, 64, 3)
        psnr = -10 * np.log10(((keep - src) ** 2).mean())
        assert psnr >= 22.0, (name, psnr)                     # the photo, not noise
        assert _luma(bright) >= _luma(src) + 0.08, name       # and "brighter" brightens
    sheets = list((edited / "brighter").glob("contact_sheet.*"))
    assert sheets, "generate wrote no contact sheet"


def test_evaluate_win_rate_prefers_the_brighter_edit(edited, tmp_path):
    out = tmp_path / "eval"
    rc = evaluate_cli(["--originals_dir", str(edited / "inputs"), "--base_dir",
                       str(edited / "keep"), "--lora_dir", str(edited / "brighter"),
                       "--output_dir", str(out), "--brightness_anchor_weight", "1",
                       "--brightness_target", "0.6", "--brightness_band", "0.02",
                       "--no_plots"])
    assert rc == 0
    w = json.loads((out / "summary.json").read_text())["win_rates"]["lora_vs_base"]["brightness"]
    assert (w["wins"], w["n"]) == (3, 3), w
