"""The validation pass of the training command (and ``--estimate``), and of every command's
reward flags: each file and folder a flag names is checked before any model loads.

The checks themselves live in the bottom package (:mod:`common.checks`: exists, readable, the
right kind, safe to load; one line naming the flag and the file). Which reward option names
which kind of path, and which flag reaches it, is the registry records' (``rewards.file_options``),
so a new reward's files are checked without a line here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from common.checks import PathCheckError, check_path, check_paths, image_size
from common.images import list_images
from rewards import file_options
from rewards.vlm_named import vlm_names

from .reward_flags import RewardFlags, reward_specs
from .tiny_kontext import TINY, TINY_PHOTO


def check_reward_specs(specs: Iterable[dict]) -> None:
    """Every file option of these reward specs (the registry says which, and their flags)."""
    names = vlm_names()
    for spec in specs:
        for flag, option, value in file_options(spec):
            check_path(flag, option.kind, value, names, max_aspect=option.max_aspect)


def check_reward_paths(flags: RewardFlags) -> None:
    """The paths of the enabled reward terms (training, evaluate, --estimate)."""
    check_reward_specs(reward_specs(flags))


def check_train_paths(cfg, reward_flags: RewardFlags, estimate: bool = False) -> None:
    """Training's validation pass: every path its flags name, before any model loads.

    ``estimate``: ``--estimate`` reads no data, checkpoint or target images.
    """
    items = [("--pretrained_model", "model", cfg.pretrained_model),
             ("--prompt_file", "file", cfg.prompt_file)]
    if not estimate:
        items += [("--data_dir", "dir", cfg.data_dir),
                  ("--imagerefl_target_dir", "dir", cfg.imagerefl_target_dir)]
        if cfg.resume_from not in (None, "latest"):
            items.append(("--resume_from", "dir", cfg.resume_from))
    check_paths(items, names=(TINY, TINY_PHOTO))
    if not estimate and cfg.method == "imagerefl" and cfg.imagerefl_target_dir:
        check_targets(cfg.data_dir, cfg.imagerefl_target_dir)
    check_reward_paths(reward_flags)


def check_targets(data_dir: str, target_dir: str) -> None:
    """Every training image has its paired target (same file name), and each decodes."""
    root = Path(target_dir).expanduser()
    missing = []
    for image in list_images(data_dir):
        target = root / image.name
        if not target.is_file():
            missing.append(image.name)
            continue
        image_size("--imagerefl_target_dir", target)
    if missing:
        raise PathCheckError(f"--imagerefl_target_dir {target_dir}: no target for "
                             f"{len(missing)} training image(s), e.g. {missing[:3]} (targets "
                             f"need the same file names as --data_dir)")


__all__ = ["check_reward_paths", "check_reward_specs", "check_targets", "check_train_paths"]
