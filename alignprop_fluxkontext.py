#!/usr/bin/env python
"""AlignProp for FLUX.1 Kontext: train a LoRA by backpropagating rewards through the sampler.

    accelerate launch alignprop_fluxkontext.py --data_dir ./train_images \
        --brightness_anchor_weight 10 --grid_ratio_weight 1 [flags]
    python alignprop_fluxkontext.py --config preset.yaml --max_train_steps 100
    python alignprop_fluxkontext.py --help
    python alignprop_fluxkontext.py <training flags> --estimate   # fits? cost? (no weights, no GPU)

The flags are documented in --help and in docs/training.md; the loop lives in
alignprop/trainer.py. This file only parses flags; common/cli.py turns expected failures
(bad flags, missing data, missing models, rewards not available) into one-line
errors and exit code 2 instead of tracebacks (ALIGNPROP_DEBUG=1 shows them).
"""
from __future__ import annotations

import sys

from alignprop.config import parse_config, startup_notes
from alignprop.estimate import estimate_training
from alignprop.trainer import train
from alignprop.validate import check_train_paths
from common.cli import run_cli


def _main(argv: list[str] | None) -> int:
    train_cfg, reward_flags = parse_config(argv)
    notes = startup_notes(sys.argv[1:] if argv is None else argv, train_cfg, reward_flags)
    # every file and folder a flag names, before any model loads (one line naming the flag)
    check_train_paths(train_cfg, reward_flags, estimate=train_cfg.estimate)
    if train_cfg.estimate:  # a dry run at real size: needs no data, weights or output folder
        print(estimate_training(train_cfg, reward_flags).report())
        for note in notes:
            print(f"alignprop_fluxkontext.py: note: {note}", file=sys.stderr)
        return 0
    result = train(train_cfg, reward_flags, notes=notes)  # printed once the run is set up
    if result.interrupted:
        return 143 if result.interrupted == "SIGTERM" else 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, "alignprop_fluxkontext.py")


if __name__ == "__main__":
    sys.exit(main())
