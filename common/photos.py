"""Real photos bundled with installed packages (offline), and which ones are held out.

scikit-image ships photos in ``skimage/data`` and matplotlib in ``mpl-data/sample_data``;
demos, benchmarks, pretraining and tests read them from here, so the held-out sets are
written down once. A photo is named either by its scikit-image loader (``"astronaut"``,
:func:`photo_array`) or by its file name in one of the bundled folders (``"astronaut.png"``,
:func:`bundled_file`).

Held out: :data:`HELD_OUT` is never in any pretraining set (tiny-photo, the tiny VLM): every
figure "on held-out photos" uses these (docs/tiny_photo.md).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .images import load_image, resize_to, save_image

# Held out of every pretraining set (file names in skimage/data).
HELD_OUT = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
# The same photos by their scikit-image loader names.
HELD_OUT_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
# tiny-photo's pretraining photos: files in skimage/data and in matplotlib's sample_data.
SKIMAGE_TRAIN = ("hubble_deep_field.jpg", "ihc.png", "retina.jpg", "motorcycle_left.png",
                 "color.png", "logo.png", "chessboard_RGB.png", "brick.png", "camera.png",
                 "coins.png", "grass.png", "gravel.png", "moon.png", "page.png", "text.png",
                 "clock_motion.png", "cell.png")
MATPLOTLIB_TRAIN = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def bundled_dirs() -> tuple[Path, Path]:
    """(scikit-image's data folder, matplotlib's sample_data folder)."""
    import matplotlib
    import skimage.data

    return (Path(skimage.data.__file__).parent,
            Path(matplotlib.get_data_path()) / "sample_data")


def bundled_file(file_name: str) -> Path:
    """Path of a bundled photo file (searched in scikit-image's, then matplotlib's folder)."""
    for folder in bundled_dirs():
        if (folder / file_name).is_file():
            return folder / file_name
    raise FileNotFoundError(f"no bundled photo named {file_name!r} in {bundled_dirs()}")


def photo_array(name: str) -> np.ndarray:
    """A scikit-image photo by loader name as an (H,W,3) array (grey repeated, first view of
    stereo pairs)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):  # stereo_motorcycle returns (left, right, disparity)
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    return arr[..., :3]


def photo_tensor(name: str, max_side: int | None = None) -> torch.Tensor:
    """(3,H,W) float in [0,1]; the long side scaled down to ``max_side`` (never up)."""
    arr = photo_array(name)
    arr = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else max(float(arr.max()), 1.0))
    img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    h, w = img.shape[1:]
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        img = resize_to(img, round(h * s), round(w * s), mode="stretch")
    return img


def write_photos(folder: str | Path, names: Sequence[str], max_side: int | None = None,
                 skip_missing: bool = False) -> list[Path]:
    """Save scikit-image photos as ``folder/<name>.png`` (existing files are left alone).

    ``max_side`` scales the long side down; ``skip_missing`` skips (and reports on stderr)
    photos whose optional data file is absent instead of failing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.exists():
            try:
                img = photo_tensor(name, max_side)
            except Exception as exc:  # optional data files (pooch) may be absent
                if not skip_missing:
                    raise
                print(f"skipped skimage.data.{name}: {exc}", file=sys.stderr)
                continue
            save_image(img, path)
        paths.append(path)
    return paths


def load_files(file_names: Iterable[str]) -> list[torch.Tensor]:
    """Bundled photo files as (3,H,W) tensors in [0,1]."""
    return [load_image(bundled_file(n)) for n in file_names]


__all__ = ["HELD_OUT", "HELD_OUT_NAMES", "SKIMAGE_TRAIN", "MATPLOTLIB_TRAIN", "bundled_dirs",
           "bundled_file", "photo_array", "photo_tensor", "write_photos", "load_files"]
