#!/usr/bin/env python
"""AlignProp for FLUX.1 Kontext: train a LoRA by backpropagating rewards through the sampler.

    accelerate launch alignprop_fluxkontext.py --data_dir ./train_images \
        --brightness_anchor_weight 10 --grid_ratio_weight 1 [flags]
    python alignprop_fluxkontext.py --config preset.yaml --max_train_steps 100
    python alignprop_fluxkontext.py --help

The flags are documented in --help and in docs/training.md; the loop lives in
alignprop/trainer.py. This file only parses flags; rewards/cli.py turns expected failures
(bad flags, missing data, missing models, rewards not available) into one-line
errors and exit code 2 instead of tracebacks (ALIGNPROP_DEBUG=1 shows them).
"""
from __future__ import annotations

import sys


def _main(argv: list[str] | None) -> int:
    from alignprop.config import parse_config

    train_cfg, reward_flags = parse_config(argv)
    # Paths first (seconds, not minutes): the data folder, the checkpoint to resume,
    # and an --output_dir that is writable and not another run's folder.
    from alignprop.checkpoint import preflight

    preflight(train_cfg)
    from alignprop.trainer import train

    result = train(train_cfg, reward_flags)
    if result.interrupted:
        return 143 if result.interrupted == "SIGTERM" else 130
    return 0


def main(argv: list[str] | None = None) -> int:
    from rewards.cli import run_cli

    return run_cli(_main, argv, "alignprop_fluxkontext.py")


if __name__ == "__main__":
    sys.exit(main())
