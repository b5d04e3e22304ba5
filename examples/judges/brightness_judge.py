#!/usr/bin/env python
"""An example judge for --reward_command: each image's mean brightness, quantised.

    python alignprop_fluxkontext.py --method grpo \\
        --reward_command "python examples/judges/brightness_judge.py --levels 255" ...

Follows the protocol of rewards/command.py: the last argument is the manifest.json of a
folder holding the batch's PNGs; the judge writes scores.json beside it, one number per
image name. The score is the mean Rec.709 luma of the 8-bit image in ``--levels`` steps
(``round(luma x levels)``, an integer): a judge that gives no gradient and ties images
closer than one step, like a person or a thresholded detector would. Higher is brighter.
Only numpy and Pillow; run without a shell, in the batch's folder.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=int, default=255,
                    help="Brightness steps between black (0) and white (levels)")
    ap.add_argument("manifest", help="manifest.json written by the trainer")
    args = ap.parse_args(argv)
    if args.levels < 1:
        ap.error("--levels must be >= 1")
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    folder = manifest_path.parent
    scores = {}
    for entry in manifest["images"]:
        rgb = np.asarray(Image.open(folder / entry["image"]).convert("RGB"), np.float64) / 255
        luma = float((rgb @ np.array([0.2126, 0.7152, 0.0722])).mean())
        scores[entry["name"]] = round(luma * args.levels)
    (folder / manifest["scores_json"]).write_text(json.dumps(scores), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
