"""How much of each held-out photo's chroma does tiny-photo's "Make it black and white." remove?

    PYTHONPATH=. python benchmarks/tiny_photo_per_photo.py [--weights shipped DIR ...]

For each model (``shipped``: alignprop/assets/tiny-photo; or a folder that
``python -m alignprop.pretrain_tiny`` wrote, sha256-checked against its manifest) it runs
pretrain_tiny's own ``evaluate`` (FluxKontextPipeline, 64 px, 8 steps, guidance 2.5, seed 0:
the figures the pretraining command prints) on both held-out sets of docs/tiny_photo.md and
prints, per photo, the input's chroma (mean |RGB - luma|; the grey target's is 0), the
fraction of it the instruction removed and the chroma left in the output; then each model's
range of the other three edits per set. Writes nothing. About 15 s per model on one core.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from alignprop.photo_sets import load_second_set, second_set_paths  # noqa: E402
from alignprop.pretrain_tiny import SIZE, evaluate, held_out_photos  # noqa: E402
from alignprop.tiny_photo import load_tiny_photo_pipeline, statistic  # noqa: E402
from common.cli import run_cli  # noqa: E402
from common.photos import HELD_OUT  # noqa: E402

OTHER_EDITS = ("brighter", "darker", "warmer")


def weights_arg(value: str) -> str:
    """'shipped' or a folder holding a manifest.json (else argparse's one-line error)."""
    if value == "shipped" or (Path(value) / "manifest.json").is_file():
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither 'shipped' nor a folder with the "
                                     f"manifest.json that alignprop.pretrain_tiny writes")


def load(weights: str):
    return load_tiny_photo_pipeline() if weights == "shipped" else \
        load_tiny_photo_pipeline(asset_dir=Path(weights))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=weights_arg, nargs="+", default=["shipped"],
                    help="'shipped' and/or folders written by alignprop.pretrain_tiny")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sets = {"first": ([Path(n).stem for n in HELD_OUT], held_out_photos()),
            "second": ([p.stem for p in second_set_paths()], load_second_set(SIZE))}
    reports = {w: {name: evaluate(load(w), images) for name, (_, images) in sets.items()}
               for w in args.weights}
    for name, (photos, images) in sets.items():
        chroma = statistic("chroma", images).tolist()
        print(f"\n{name} held-out set: \"Make it black and white.\", % of the input's chroma "
              "removed (chroma left in the output)")
        print("| photo | input chroma | " + " | ".join(args.weights) + " |")
        print("|---" * (2 + len(args.weights)) + "|")
        for i, photo in enumerate(photos):
            cells = []
            for w in args.weights:
                f = reports[w][name]["edits"]["black_and_white"]["fraction_per_photo"][i]
                cells.append(f"{100 * f:.0f} % ({chroma[i] * (1 - f):.3f})")
            print(f"| {photo} | {chroma[i]:.3f} | " + " | ".join(cells) + " |")
        means = [f"{100 * reports[w][name]['edits']['black_and_white']['fraction']:.0f} %"
                 for w in args.weights]
        print("| mean (the checks' figure) | | " + " | ".join(means) + " |")
        for w in args.weights:
            ranges = []
            for edit in OTHER_EDITS:
                per = reports[w][name]["edits"][edit]["fraction_per_photo"]
                ranges.append(f"{edit} {100 * min(per):.0f}-{100 * max(per):.0f} %")
            r = reports[w][name]
            print(f"{w}: " + ", ".join(ranges) + f"; identity {r['identity_psnr_db']:.2f} dB "
                  f"(VAE {r['vae_psnr_db']:.2f} dB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "tiny_photo_per_photo.py"))
