"""Tests of the shared image loader common/images.py on what users' folders contain."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from common.images import (ImageLoadError, list_images, load_image, load_images, resize_to,
                            save_image)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_becomes_three_equal_channels(tmp_path):
    arr = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    x = load_image(_save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(arr / 255.0).float(), atol=1e-6)


def test_palette_image_keeps_its_colours(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:] = (0, 0, 255)
    p = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4)
    assert p.mode == "P"
    x = load_image(_save(p, tmp_path / "p.png"))
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(x[:, 0, 15], torch.tensor([0.0, 0.0, 1.0]))


def test_palette_with_transparency_composited_on_white(tmp_path):
    p = Image.new("P", (16, 16), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.paste(1, (8, 0, 16, 16))
    p.info["transparency"] = 0  # palette index 0 (black) is transparent
    path = tmp_path / "pt.png"
    p.save(path, transparency=0)
    x = load_image(path)
    assert torch.allclose(x[:, 0, 0], torch.ones(3))            # transparent -> white
    assert torch.allclose(x[:, 0, 15], torch.tensor([1.0, 0, 0]))  # opaque red stays red


def test_rgba_alpha_composited_on_white(tmp_path):
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[:, :, 3] = 255                # opaque black ...
    arr[:, :4] = (255, 0, 0, 0)       # ... fully transparent red -> white
    arr[:, 4:8] = (0, 0, 0, 128)      # half-transparent black -> mid grey
    x = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
    assert torch.allclose(x[:, 0, 5], torch.full((3,), 127 / 255), atol=2 / 255)
    assert torch.allclose(x[:, 0, 10], torch.zeros(3))


def test_la_alpha_composited_on_white(tmp_path):
    arr = np.zeros((16, 16, 2), np.uint8)
    arr[:, :8] = (0, 0)      # transparent black -> white
    arr[:, 8:] = (0, 255)    # opaque black
    x = load_image(_save(Image.fromarray(arr, "LA"), tmp_path / "la.png"))
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
    assert torch.allclose(x[:, 0, 15], torch.zeros(3))


@pytest.mark.parametrize("value", [65535, 32768, 200])  # 200/65535: a very dark 16-bit image
def test_16bit_png_is_scaled_by_65535(tmp_path, value):
    arr = np.full((16, 16), value, np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # 16-bit grey as PIL reads it
    x = load_image(path)
    assert torch.allclose(x, torch.full_like(x, value / 65535.0), atol=1e-4)


def _png_rgb16(path, value, size=16):
    """A 16-bit-per-channel RGB PNG, written by hand (PIL cannot write one)."""
    import struct
    import zlib

    row = b"\x00" + struct.pack(">" + "H" * 3 * size, *([value] * 3 * size))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))
    return path


def test_16bit_rgb_png(tmp_path):
    x = load_image(_png_rgb16(tmp_path / "rgb16.png", 32768))
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, torch.full_like(x, 0.5), atol=1 / 255)


def test_float_tiff(tmp_path):
    arr = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    x = load_image(_save(Image.fromarray(arr, "F"), tmp_path / "f.tif"))
    assert torch.allclose(x[0], torch.from_numpy(arr), atol=1e-6)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white in the stored (landscape) pixels
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    x = load_image(path)
    assert x.shape == (3, 32, 16)  # displayed portrait
    # rotating 90 degrees clockwise puts the stored left half on top
    assert x[:, :12].mean() > 0.9 and x[:, 20:].mean() < 0.1


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    x = load_image(_save(cmyk, tmp_path / "c.jpg", quality=95))
    assert x.shape == (3, 16, 16)
    r, g, b = x.mean(dim=(1, 2)).tolist()
    assert r > 0.9 and g < 0.15 and b < 0.15


def test_truncated_file_raises_image_load_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(
        buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(path)


def test_non_image_and_empty_file_raise_image_load_error(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("notes.png", "empty.jpg"):
        with pytest.raises(ImageLoadError, match=name):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_tiny_image_refused_unless_allowed(tmp_path):
    path = _save(Image.new("RGB", (4, 3), (10, 20, 30)), tmp_path / "t.png")
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(path)
    assert load_image(path, min_size=1).shape == (3, 3, 4)


def test_load_images_skips_and_reports(tmp_path):
    good = _save(Image.new("RGB", (16, 16)), tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("x")
    imgs, failed = load_images([good, tmp_path / "bad.png"], skip_errors=True)
    assert len(imgs) == 1 and [p.name for p, _ in failed] == ["bad.png"]
    with pytest.raises(ImageLoadError):
        load_images([tmp_path / "bad.png"])


def test_list_images_sorted_filters_extensions_and_hidden(tmp_path):
    for n in ("b.JPG", "a.png", ".hidden.png", "c.txt", "d.webp"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "d.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.png", "b.JPG", "d.webp", "e.png"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "a.png")


def test_resize_crop_keeps_aspect_and_centre():
    x = torch.zeros(3, 20, 40)
    x[:, :, 10:30] = 1.0  # bright centre band, dark left/right quarters
    y = resize_to(x, 16, 16, mode="crop")
    assert y.shape == (3, 16, 16)
    assert y[:, :, 4:12].mean() > 0.95          # the centre survives the crop
    assert y.min() >= 0 and y.max() <= 1         # bicubic overshoot clamped
    s = resize_to(x, 16, 16, mode="stretch")
    assert s.shape == (3, 16, 16)
    assert s[:, :, 0].mean() < 0.2 and s[:, :, 8].mean() > 0.9  # whole width squeezed in
    batch = resize_to(torch.rand(2, 3, 33, 17), 32, 16)
    assert batch.shape == (2, 3, 32, 16)
    with pytest.raises(ValueError, match="resize mode"):
        resize_to(x, 8, 8, mode="fit")


def test_save_image_roundtrip(tmp_path):
    x = torch.rand(3, 16, 24)
    save_image(x, tmp_path / "sub" / "o.png")
    y = load_image(tmp_path / "sub" / "o.png")
    assert y.shape == x.shape and (x - y).abs().max() <= 0.5 / 255 + 1e-6
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["o.png"]  # no temp file left
