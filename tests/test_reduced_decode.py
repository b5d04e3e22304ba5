"""Large photos are decoded at the size they are needed at, and never kept at full size.

Memory figures live in benchmarks/bench_memory.py; these tests check the mechanism: the
pixels handed to the float conversion are already reduced (JPEG draft / PIL reduce).
"""
import numpy as np
import pytest
import torch
from PIL import Image

import common.images as images


def _photo(path, w=2400, h=1600, **save):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([(x / w) * 255, (y / h) * 255, ((x + y) / (w + h)) * 255], -1).astype(np.uint8)
    Image.fromarray(arr).save(path, **save)
    return path


@pytest.fixture
def decoded_sizes(monkeypatch):
    """PIL sizes that reach the float conversion (the step that costs 12 bytes a pixel)."""
    sizes = []
    real = images._to_float_rgb
    monkeypatch.setattr(images, "_to_float_rgb", lambda img: sizes.append(img.size) or real(img))
    return sizes


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_reduce_to_decodes_at_reduced_size_and_keeps_the_picture(tmp_path, decoded_sizes, suffix):
    from common.images import load_image, resize_to

    p = _photo(tmp_path / f"big{suffix}")
    small = load_image(p, reduce_to=200)
    w, h = decoded_sizes[-1]
    assert 200 <= min(w, h) < 400 and w * h < 2400 * 1600 / 15  # not the full 3.8 MP
    full = load_image(p)
    assert decoded_sizes[-1] == (2400, 1600)
    a = resize_to(small, 120, 180)
    b = resize_to(full, 120, 180)
    assert (a - b).abs().mean() < 0.01  # the same picture


def test_reduced_decode_keeps_exif_orientation(tmp_path):
    from common.images import load_image

    p = tmp_path / "rotated.jpg"
    img = Image.open(_photo(tmp_path / "plain.jpg"))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(p, exif=exif.tobytes())
    full, small = load_image(p), load_image(p, reduce_to=200)
    assert full.shape[1] > full.shape[2] and small.shape[1] > small.shape[2]  # portrait
    down = torch.nn.functional.interpolate(full[None], size=small.shape[1:], mode="area")[0]
    assert (down - small).abs().mean() < 0.02


def test_training_images_are_decoded_small_once(tmp_path, decoded_sizes):
    from alignprop.data import ImageFolder

    d = tmp_path / "photos"
    d.mkdir()
    _photo(d / "a.jpg")
    _photo(d / "b.png")
    folder = ImageFolder(d, 64, 96, "x")
    assert len(decoded_sizes) == 2
    assert all(max(s) < 800 for s in decoded_sizes), decoded_sizes  # not 2400x1600
    for _ in range(3):
        assert folder.load(0).shape == (3, 64, 96) and folder.load(1).shape == (3, 64, 96)
    assert len(decoded_sizes) == 2  # cached: no decode per step


def test_evaluate_decodes_originals_at_output_size_and_keeps_none(tmp_path, decoded_sizes,
                                                                  monkeypatch):
    import alignprop.evaluate as ev

    originals, outputs = tmp_path / "orig", tmp_path / "out"
    originals.mkdir(), outputs.mkdir()
    for n in ("a", "b", "c"):
        _photo(originals / f"{n}.jpg")
        Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(outputs / f"{n}.png")
    monkeypatch.setattr(ev, "BATCH_PIXELS", 5_000_000)  # > one 3.8-MP photo, < two
    alive = []
    real_flush_stack = torch.stack

    def stack(tensors, *a, **k):  # how many full-size photos one scoring call holds
        alive.append(sum(t.shape[-1] * t.shape[-2] >= 2400 * 1600 for t in tensors))
        return real_flush_stack(tensors, *a, **k)

    spec = tmp_path / "spec.json"  # lpips compares each output with its original
    spec.write_text('[{"name": "lpips", "pretrained": false, "resolution": 32, "device": "cpu"}]')
    monkeypatch.setattr(ev.torch, "stack", stack)
    assert ev.cli(["--originals_dir", str(originals), "--lora_dir", str(outputs), "--rewards",
                   "brightness", "--reward_spec", str(spec), "--output_dir",
                   str(tmp_path / "e"), "--no_plots", "--no_hacking_check"]) == 0
    assert max(alive) == 1  # full-size originals are scored one at a time
    # originals compared with 96x64 outputs were decoded reduced, not at 2400x1600
    full = [s for s in decoded_sizes if s == (2400, 1600)]
    assert len(full) == 3  # each original decoded at full size once: to score it as itself
