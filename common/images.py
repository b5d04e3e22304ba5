"""Robust image I/O in the project's convention: float tensors (3,H,W) / (B,3,H,W) in [0,1].

Handles what users' folders contain: EXIF-rotated JPEGs, grayscale, palette,
RGBA/LA (alpha composited on white), CMYK, 16-bit PNG/TIFF, float TIFF. Anything
unreadable raises :class:`ImageLoadError` naming the file; callers decide whether
to skip (folders) or stop (a single required image such as a style reference).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# PIL refuses images above ~179 MP as decompression bombs; we accept up to this
# many pixels (a 16k x 16k photo) and refuse larger ones with a clear error.
MAX_PIXELS = 16384 * 16384


class ImageLoadError(ValueError):
    """An image file could not be read or is unusable; the message names the file."""


def list_images(folder: str | Path, recursive: bool = False,
                exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Sorted image files of ``folder`` (by extension). Raises if the folder is missing.

    ``exclude``: folders strictly inside ``folder`` whose files are left out (a command's own
    output folder inside the folder it reads, so that its outputs never become its inputs)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got a file: {folder}")
    pattern = "**/*" if recursive else "*"
    root = folder.resolve()
    skip = [e for e in (Path(x).expanduser().resolve() for x in exclude if x is not None)
            if e != root and e.is_relative_to(root)]
    return sorted(p for p in folder.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith(".")
                  and not (skip and any(p.resolve().is_relative_to(e) for e in skip)))


def relative_name(path: str | Path, root: str | Path) -> str:
    """``path`` relative to the folder it was found in, as a POSIX string ("sub/cat.png"):
    the name outputs keep, so that two ``cat.png`` of different sub-folders never collide."""
    return Path(path).relative_to(Path(root).expanduser()).as_posix()


def folder_counts(paths: Iterable[Path], root: str | Path) -> str | None:
    """"5 image(s) in DIR: . (2), portraits (3)": how many of ``paths`` each sub-folder of
    ``root`` holds, printed when a recursive search found images in sub-folders (so what was
    taken from where shows); None when they all sit in ``root`` itself."""
    from collections import Counter

    root = Path(root).expanduser()
    counts = Counter(Path(p).parent.relative_to(root).as_posix() for p in paths)
    if set(counts) <= {"."}:
        return None
    listing = ", ".join(f"{k} ({n})" for k, n in sorted(counts.items()))
    return f"{sum(counts.values())} image(s) in {root}: {listing}"


def unsupported_note(folder: str | Path, recursive: bool = False) -> str:
    """For "no images" errors: which file types in ``folder`` were passed over, e.g.
    ``"; it holds 3 file(s) of unsupported types: .gif (2), .heic (1)"`` ("" if none)."""
    from collections import Counter

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return ""
    pattern = "**/*" if recursive else "*"
    kinds = Counter(p.suffix.lower() or "(no extension)" for p in folder.glob(pattern)
                    if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() not in IMAGE_EXTENSIONS)
    if not kinds:
        return ""
    listing = ", ".join(f"{k} ({n})" for k, n in kinds.most_common())
    return (f"; it holds {sum(kinds.values())} file(s) of unsupported types: {listing} "
            f"(convert them to PNG or JPEG)")


def _to_float_rgb(img) -> torch.Tensor:
    """PIL image of any mode -> float32 tensor (3,H,W) in [0,1].

    8-bit images (the common case) go uint8 -> channels-first -> one float32 tensor,
    so a 100-MP photo costs one float copy (1.2 GB), not four.
    """
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif mode == "I":
        arr = np.asarray(img, dtype=np.int64).astype(np.float32)
        # 32-bit int images from 16-bit PNGs keep 0..65535
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.repeat((arr / scale)[..., None], 3, axis=-1)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max(initial=0))
        if hi > 1.0:
            arr = arr / (65535.0 if hi > 255 else 255.0)
        arr = np.repeat(arr[..., None], 3, axis=-1)
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        u8 = np.asarray(img.convert("RGB"), dtype=np.uint8)
        with warnings.catch_warnings():  # read-only array: it is copied, never written
            warnings.simplefilter("ignore", UserWarning)
            u8 = torch.from_numpy(u8)
        return u8.permute(2, 0, 1).contiguous().float().div_(255.0)
    arr = np.clip(arr, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


# EXIF orientation tag -> the transpose that shows the image upright (as ImageOps does).
_ORIENT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
           6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def _open_reduced(img, min_side: int):
    """Decode ``img`` at the smallest integer reduction whose shorter side is >= ``min_side``.

    JPEG: ``draft`` makes libjpeg decode at 1/2, 1/4 or 1/8 scale (a 12000x9000 photo for a
    512 px target decodes as 1500x1125: ~64x less memory and time); then ``reduce`` (box
    average) takes any format the rest of the way. Orientation is applied after, on the
    small image. Returns a loaded PIL image, upright.
    """
    from PIL import Image

    orientation = img.getexif().get(0x0112, 1)
    w0, h0 = img.size
    factor = min(w0, h0) // max(1, min_side)
    if factor >= 2 and img.format == "JPEG":
        img.draft(None, (-(-w0 // factor), -(-h0 // factor)))
    img.load()
    factor = min(img.size) // max(1, min_side)
    if factor >= 2:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        try:
            img = img.reduce(factor)
        except ValueError:  # a mode reduce() does not take (e.g. some 16-bit modes)
            pass
    if orientation in _ORIENT:
        img = img.transpose(getattr(Image.Transpose, _ORIENT[orientation]))
    return img


def load_image(path: str | Path, min_size: int = 8, reduce_to: int | None = None) -> torch.Tensor:
    """Load one image as a float tensor (3,H,W) in [0,1], EXIF orientation applied.

    ``reduce_to``: the caller only needs a shorter side of at least this many pixels
    (e.g. the largest side of a training crop), so large photos are decoded at a
    reduced size (:func:`_open_reduced`) instead of at full resolution.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                with Image.open(path) as img:
                    if reduce_to:
                        img = _open_reduced(img, reduce_to)
                    else:
                        img.load()
                        img = ImageOps.exif_transpose(img)
                    x = _to_float_rgb(img)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image {path}: corrupt or truncated ({exc})") from None
    h, w = x.shape[1:]
    if min(h, w) < min_size:
        raise ImageLoadError(f"image {path} is too small ({w}x{h}); need at least {min_size} px a side")
    return x


def load_images(paths: Iterable[str | Path], skip_errors: bool = False,
                min_size: int = 8) -> tuple[list[torch.Tensor], list[tuple[Path, str]]]:
    """Load many images; with ``skip_errors`` unreadable files are returned as (path, reason)."""
    images, failed = [], []
    for p in paths:
        try:
            images.append(load_image(p, min_size=min_size))
        except ImageLoadError as exc:
            if not skip_errors:
                raise
            failed.append((Path(p), str(exc)))
    return images, failed


def to_pil(image: torch.Tensor):
    """(3,H,W) float tensor in [0,1] -> PIL RGB image."""
    from PIL import Image

    arr = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8))


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Save a (3,H,W) [0,1] tensor; written to a temp name then renamed (atomic)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG")
    to_pil(image).save(tmp, format=fmt)
    os.replace(tmp, path)


def resize_to(image: torch.Tensor, height: int, width: int, mode: str = "crop") -> torch.Tensor:
    """Resize (3,H,W) or (B,3,H,W) to (height, width).

    ``mode="crop"`` keeps the aspect ratio (scale to cover, then centre-crop);
    ``mode="stretch"`` resizes directly. Antialiased bicubic, clamped to [0,1].
    """
    import torch.nn.functional as F

    squeeze = image.ndim == 3
    x = image[None] if squeeze else image
    if mode == "crop":
        h, w = x.shape[-2:]
        s = max(height / h, width / w)
        nh, nw = max(height, round(h * s)), max(width, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - height) // 2, (nw - width) // 2
        x = x[..., top:top + height, left:left + width]
    elif mode == "stretch":
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; use 'crop' or 'stretch'")
    x = x.clamp(0, 1)
    return x[0] if squeeze else x
