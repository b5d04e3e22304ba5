"""The held-out photo sets: photos no model of this project was pretrained or trained on.

* :data:`SKIMAGE_HELD_OUT` -- astronaut, chelsea, coffee, rocket from scikit-image: held out
  of ``tiny-photo``'s pretraining (``alignprop/pretrain_tiny.py``) and of the demo's LoRA
  training; the demo and tiny-photo's checks are measured on them.
* the second set (:func:`second_set_paths`) -- 12 photos of another source, bundled in
  ``alignprop/assets/held_out_photos/`` (128x128 crops of CC-BY-4.0 / CC0 photographs from
  Debian's ``lomiri-wallpapers-16.04``; authors, licences and crop boxes in ``SOURCES.json``
  there): landscapes, a sunset with dark ground, flowers, a fig, dogs, an interior, paint
  brushes and a smooth generated colour swirl. Nothing pretrains on them; the demo's checks
  must hold on them too.

docs/tiny_photo.md lists both sets; tests/test_photo_sets.py checks that no pretraining list
names a held-out photo.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common.images import load_image, resize_to
from common.photos import HELD_OUT_NAMES

SKIMAGE_HELD_OUT = HELD_OUT_NAMES
SECOND_SET_DIR = Path(__file__).resolve().parent / "assets" / "held_out_photos"
SOURCES = "SOURCES.json"


def second_set_sources() -> dict:
    """name -> {source_file, author, license, crop_left_top_size_px, size}."""
    return json.loads((SECOND_SET_DIR / SOURCES).read_text())["photos"]


def second_set_paths() -> list[Path]:
    """The bundled PNGs, sorted by name (every one listed in SOURCES.json)."""
    return [SECOND_SET_DIR / f"{name}.png" for name in sorted(second_set_sources())]


def load_second_set(size: int) -> torch.Tensor:
    """(12,3,size,size) in [0,1]: the second held-out set, resized like the data loader does."""
    return torch.stack([resize_to(load_image(p), size, size) for p in second_set_paths()])


__all__ = ["SKIMAGE_HELD_OUT", "SECOND_SET_DIR", "second_set_paths", "second_set_sources",
           "load_second_set"]
