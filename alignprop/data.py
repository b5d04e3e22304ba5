"""Training data: a folder of input images, each paired with an edit instruction.

Images are read with :func:`common.images.load_image` (EXIF orientation, grayscale,
palette, RGBA on white, CMYK, 16-bit handled there), resized to cover the training
size and centre-cropped. Every file is opened once at start-up so unreadable ones
are found before step 0 and reported in one warning; an empty or missing folder is
an error.

Order: :class:`SampleStream` is a deterministic, resumable stream over an infinite
sequence of epochs. Sample ``j`` of the run is image ``perm_e[j mod N]`` of epoch
``e = j // N`` with ``perm_e`` a permutation seeded by ``(seed, e)``. The trainer
stores only ``j`` (samples consumed) in its checkpoint, so a resumed run sees
exactly the images it would have seen.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from common.cli import UserError
from common.images import (ImageLoadError, folder_counts, list_images, load_image, resize_to,
                           unsupported_note)

from .prompts import draw, lookup, read_prompt_file

logger = logging.getLogger(__name__)


# Resized training images kept in memory (float32, 3 MiB each at 512x512: ~680 images);
# images beyond it are decoded again (at reduced size) when drawn.
CACHE_BYTES = 2 * 1024 ** 3


class DataError(UserError):
    """The training data cannot be used (missing/empty folder, no readable image)."""


@dataclass
class Item:
    path: Path
    prompt: str


class ImageFolder:
    """Readable images of ``folder`` with their prompts, resized to (height, width)."""

    def __init__(self, folder: str | Path, height: int, width: int, prompt: str,
                 prompt_file: str | Path | None = None, seed: int = 0, recursive: bool = True):
        try:
            paths = list_images(folder, recursive=recursive)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise DataError(f"--data_dir: {exc}") from None
        where = " or its sub-folders" if recursive else " (sub-folders not searched)"
        if not paths:
            raise DataError(f"--data_dir {folder}{where} holds no images (looked for .jpg, .jpeg, "
                            f".png, .webp, .bmp, .tif, .tiff)"
                            f"{unsupported_note(folder, recursive)}")
        counts = folder_counts(paths, folder) if recursive else None
        if counts:
            logger.info("--data_dir: %s", counts)
        self.height, self.width = height, width
        # Resized images are kept (up to CACHE_BYTES) from this first decode on, so a
        # training step never decodes a photo again, and a file that later disappears
        # costs nothing. Decoding is at reduced size (JPEG draft / reduce): a 100-MP
        # photo for a 512 px crop is decoded as ~1-2 MP.
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_bytes = 0
        self.failed_during_run: dict[str, str] = {}
        good, bad, first = [], [], []
        for p in paths:
            try:
                first.append(self._decode(p))  # decode once: fail early, not at step 10,000
                good.append(p)
            except (ImageLoadError, OSError) as exc:
                bad.append((p, str(exc)))
        if bad:
            listing = "\n  ".join(f"{p.name}: {why}" for p, why in bad)
            logger.warning("skipping %d unreadable image(s) in %s:\n  %s", len(bad), folder, listing)
        if not good:
            raise DataError(f"--data_dir {folder}: none of the {len(paths)} image files could be "
                            f"read")
        self.skipped = [p for p, _ in bad]
        self.prompts = read_prompt_file(prompt_file) if prompt_file is not None else [prompt]
        mapping = self.prompts if isinstance(self.prompts, dict) else {}
        self.items = [Item(p, lookup(mapping, p.name) or prompt) for p in good]
        self.seed = seed
        for i, img in enumerate(first):
            self._remember(i, img)

    def __len__(self) -> int:
        return len(self.items)

    def all_prompts(self) -> list[str]:
        """Every prompt any sample can get (encoded once before training)."""
        if isinstance(self.prompts, list):
            return list(self.prompts)
        return sorted({it.prompt for it in self.items})

    def prompt_for(self, index: int, sample_number: int) -> str:
        """Prompt of the ``sample_number``-th sample (image ``index``); deterministic."""
        if isinstance(self.prompts, list):
            return draw(self.prompts, self.seed, sample_number)
        return self.items[index].prompt

    def _decode(self, path: Path) -> torch.Tensor:
        img = load_image(path, reduce_to=max(self.height, self.width))
        return resize_to(img, self.height, self.width, mode="crop")

    def _remember(self, index: int, img: torch.Tensor) -> None:
        size = img.numel() * img.element_size()
        if self._cache_bytes + size <= CACHE_BYTES:
            self._cache[index] = img
            self._cache_bytes += size

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as (3, H, W) in [0, 1] at the training size."""
        if index in self._cache:
            return self._cache[index]
        img = self._decode(self.items[index].path)
        self._remember(index, img)
        return img

    def load_or_substitute(self, index: int) -> tuple[torch.Tensor, int]:
        """``load(index)``, or, if that file became unreadable since start-up, the next
        readable image (index + 1, + 2, ...): the batch keeps its shape and every rank stays
        in step. Each lost file is warned about once and listed in ``failed_during_run``.
        """
        n = len(self.items)
        for k in range(n):
            i = (index + k) % n
            path = self.items[i].path
            if str(path) in self.failed_during_run:
                continue
            try:
                return self.load(i), i
            except (ImageLoadError, OSError) as exc:
                reason = " ".join(str(exc).split())
                self.failed_during_run[str(path)] = reason
                logger.warning("skipping %s from now on: it became unreadable during the run "
                               "(%s)", path, reason)
        raise DataError(f"--data_dir {self.items[0].path.parent}: every image became unreadable "
                        f"during the run")


def seed_for(*parts) -> int:
    """Stable 63-bit seed from any parts (python's hash() is salted per process): every draw
    a step makes is seeded from (seed, purpose, step, micro-batch, rank, ...)."""
    return int(hashlib.sha256("-".join(map(str, parts)).encode()).hexdigest()[:15], 16)


class SampleStream:
    """Deterministic infinite sample order; ``position`` = samples already consumed.

    Shuffled per epoch from the seed; ``shuffle=False`` cycles through the folder's (sorted)
    order, as the original trainer did (--semantics original)."""

    def __init__(self, size: int, seed: int, position: int = 0, shuffle: bool = True):
        self.size, self.seed, self.position, self.shuffle = size, seed, position, shuffle
        self._epoch, self._perm = -1, None

    def _index(self, j: int) -> int:
        if not self.shuffle:
            return j % self.size
        epoch = j // self.size
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm, self._epoch = torch.randperm(self.size, generator=g).tolist(), epoch
        return self._perm[j % self.size]

    def take(self, global_batch: int, rank: int, per_rank: int) -> list[tuple[int, int]]:
        """Next global batch; returns this rank's (sample number, image index) pairs.

        Every rank advances ``position`` by the whole global batch, so ranks stay in
        step and each sees a disjoint slice.
        """
        start = self.position + rank * per_rank
        out = [(j, self._index(j)) for j in range(start, start + per_rank)]
        self.position += global_batch
        return out

    @property
    def epoch(self) -> int:
        return self.position // self.size


def load_batch(folder: ImageFolder, picks: Sequence[tuple[int, int]], return_indices=False):
    """Images (B,3,H,W) in [0,1] and their prompts for (sample number, index) pairs; with
    ``return_indices`` also the indices of the images used (a lost file's substitute)."""
    loaded = [folder.load_or_substitute(i) for _, i in picks]
    images = torch.stack([img for img, _ in loaded])
    prompts = [folder.prompt_for(used, j) for (j, _), (_, used) in zip(picks, loaded)]
    if return_indices:
        return images, prompts, [used for _, used in loaded]
    return images, prompts


__all__ = ["ImageFolder", "SampleStream", "DataError", "load_batch", "seed_for"]
