#!/usr/bin/env python
"""AlignProp for FLUX.1 Kontext: train a LoRA by backpropagating rewards through the sampler.

    accelerate launch alignprop_fluxkontext.py --data_dir ./train_images \
        --brightness_anchor_weight 10 --grid_ratio_weight 1 [flags]
    python alignprop_fluxkontext.py --config preset.yaml --max_train_steps 100
    python alignprop_fluxkontext.py --help

The flags are documented in --help and in docs/training.md; the loop lives in
alignprop/trainer.py. This file only parses flags and turns expected failures
(bad flags, missing data, missing models, rewards not available) into one-line
errors instead of tracebacks.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from alignprop.config import MissingDependencyError, parse_config
    from alignprop.data import DataError
    from alignprop.reward_flags import RewardBuildError
    from rewards.hub import ModelUnavailableError

    try:
        train_cfg, reward_flags = parse_config(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from alignprop.trainer import train

    try:
        result = train(train_cfg, reward_flags)
    except (DataError, RewardBuildError, ModelUnavailableError, MissingDependencyError,
            FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result.interrupted:
        return 143 if result.interrupted == "SIGTERM" else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
