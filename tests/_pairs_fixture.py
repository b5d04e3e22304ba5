"""A pairs folder in the real format, made from scikit-image's bundled photos.

Each pair's two "edits" are the photo made brighter and made darker, in a random order
(``truth[pair_id]`` = index of the brighter one), so a test can tell whether a
preferences file says what a person who wanted the brighter edit would have chosen.
The trajectories are valid safetensors files with zero latents and log-probs of the
shapes a sampled pair would have; the annotation side never reads inside them.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from alignprop.pairs_format import PairsManifest, pair_files, write_pairs

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry",
          "retina", "hubble_deep_field")
PROMPTS = ("Make it brighter.", "Make the photo brighter.", "Lift the shadows and brighten it.")
BRIGHTER = 0.16
DARKER = -0.10


def _photo(name: str, size: int, variant: int) -> np.ndarray:
    """(size, size, 3) float in [0,1]: a square crop of a bundled photo (variant picks the crop)."""
    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    h, w = arr.shape[:2]
    side = min(h, w) * (3 if variant % 2 else 4) // 4
    top = (h - side) // 2 if variant % 3 == 0 else (h - side) * (variant % 3) // 3
    left = (w - side) // 2
    crop = Image.fromarray(arr[top:top + side, left:left + side]).resize((size, size),
                                                                        Image.Resampling.LANCZOS)
    return np.asarray(crop, dtype=np.float32) / 255.0


def _save(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def make_pairs_folder(folder: str | Path, n: int = 8, size: int = 96, seed: int = 0,
                      num_steps: int = 4) -> tuple[PairsManifest, dict[str, int]]:
    """Write a complete pairs folder; return (manifest, {pair_id: index of the brighter edit})."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    rng = random.Random(seed)
    pairs, truth = [], {}
    for i in range(n):
        pid = f"{i:04d}"
        files = pair_files(pid)
        photo = _photo(PHOTOS[i % len(PHOTOS)], size, i // len(PHOTOS))
        brighter_first = rng.random() < 0.5
        edits = [photo + BRIGHTER, photo + DARKER]
        if not brighter_first:
            edits.reverse()
        truth[pid] = 0 if brighter_first else 1
        _save(photo, folder / files["input"])
        for edit, rel in zip(edits, files["images"], strict=True):
            _save(edit, folder / rel)
        traj = folder / files["trajectory"]
        traj.parent.mkdir(parents=True, exist_ok=True)
        latent = size // 8
        save_file({"latents": np.zeros((2, num_steps + 1, 4, latent, latent), np.float32),
                   "log_probs": np.zeros((2, num_steps), np.float32)}, str(traj))
        pairs.append({"id": pid, "prompt": PROMPTS[i % len(PROMPTS)], **files})
    manifest = write_pairs(folder, pairs, base_model="tiny-photo", lora=None, sde_noise=0.7,
                           num_steps=num_steps, height=size, width=size, seed=seed)
    return manifest, truth
